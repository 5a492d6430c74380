"""The registry browser: searchable, sortable patches with details, import, export, delete."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

COLUMNS = ("Name", "Concepts", "Kind", "M-Score", "Retention", "Size", "Added")
SORT_KEYS = ("name", "concepts", "kind", "mscore", "retention", "size", "added")


def _score(record, key: str) -> float | None:
    value = (record.scores or {}).get(key)
    if isinstance(value, dict):
        return value.get("mean")
    return value if isinstance(value, (int, float)) else None


def row_values(record) -> list[object]:
    """What the table shows for a PatchRecord, column by column (numbers stay numbers)."""
    return [
        record.name,
        ", ".join(record.concepts),
        record.kind,
        _score(record, "mscore_after"),
        _score(record, "retention_after"),
        record.size,
        (record.added or "")[5:16].replace("T", " "),
    ]


EVALUATION_LABELS = {
    "asr_before": "Attack success before",
    "asr_after": "Attack success after",
    "no_attack_after": "No-attack success after",
    "chance_asr_after": "Chance ASR after",
    "mscore": "M-Score (stored)",
    "retention": "Retention (stored)",
}


def evaluation_label(e) -> str:
    label = EVALUATION_LABELS.get(e.metric, e.metric)
    return f"{label} ({e.concept})" if e.concept else label


def evaluation_text(e) -> str:
    text = f"{e.value:.3f}"
    if e.low is not None and e.high is not None:
        text += f" [{e.low:.3f}, {e.high:.3f}]"
    if e.n is not None:
        text += f", n={e.n}"
    budget = (e.settings or {}).get("budget")
    if budget is not None:
        text += f", budget {budget}"
    return text + f" · {(e.created or '')[:16].replace('T', ' ')}"


class LibraryModel(QObject):
    view = "library"  # the page its status messages belong to
    query_changed = Signal(str)
    sort_key_changed = Signal(str)
    descending_changed = Signal(bool)
    patches_changed = Signal(object)  # list[PatchRecord]
    selected_changed = Signal(object)  # PatchRecord | None
    stacks_changed = Signal(object)
    preview_changed = Signal(object)  # CompareDone | None for the selected patch
    imported = Signal(object)  # PatchRecord
    refreshed = Signal()  # the registry was read again (details may have new evaluations)

    query = state("query", str, "", query_changed)
    sort_key = state("sort_key", str, "added", sort_key_changed)
    descending = state("descending", bool, True, descending_changed)
    patches = state("patches", list, [], patches_changed)
    selected = state("selected", object, None, selected_changed)
    stacks = state("stacks", list, [], stacks_changed)
    preview = state("preview", object, None, preview_changed)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.query_changed.connect(self.refresh)
        self.sort_key_changed.connect(self.refresh)
        self.descending_changed.connect(self.refresh)
        session.registry_changed.connect(self.refresh)
        self._previews: dict[str, object] = {}  # sha256 -> CompareDone (this session)
        self.selected_changed.connect(
            lambda r: setattr(self, "preview", self._previews.get(r.sha256) if r else None)
        )

    # -------------------------------------------------------------- listing
    def refresh(self, *_):
        reg = self.session.registry()
        if reg is None:
            self.patches = []
            return
        records = self.session.attempt("Registry", lambda: self._query(reg)) or []
        key = SORT_KEYS.index(self.sort_key) if self.sort_key in SORT_KEYS else 0

        def sort_value(r):
            v = row_values(r)[key]
            return (v is not None, v if v is not None else 0, r.id)

        records.sort(key=sort_value, reverse=self.descending)
        self.patches = records
        self.stacks = self.session.attempt("Registry", reg.list_stacks) or []
        if self.selected is not None:
            same = [r for r in records if r.id == self.selected.id]
            self.selected = same[0] if same else None
        self.refreshed.emit()

    def _query(self, reg):
        q = self.query.strip()
        if not q:
            return reg.list_patches()
        found = {r.id: r for r in reg.search(q)}
        # FTS matches words; a substring match on names and concepts catches partial typing.
        for r in reg.list_patches():
            hay = " ".join([r.name, r.title, *r.concepts, *r.tags]).lower()
            if q.lower() in hay:
                found.setdefault(r.id, r)
        return list(found.values())

    def sort_by(self, key: str) -> None:
        if key == self.sort_key:
            self.descending = not self.descending
        else:
            self.sort_key = key

    def select(self, record) -> None:
        self.selected = record

    def select_name(self, name: str) -> None:
        match = [r for r in self.patches if r.name == name]
        self.selected = match[0] if match else None

    # -------------------------------------------------------------- details
    def details(self, record=None) -> list[tuple[str, str]]:
        r = record or self.selected
        if r is None:
            return []
        rows = [
            ("Name", r.name),
            ("Concepts", ", ".join(r.concepts) or "-"),
            ("Kind", f"{r.kind} ({r.method})"),
            ("Format", r.format),
            ("Family", r.family or "-"),
            ("Base model", (r.base_fingerprint or "-")[:16]),
            ("Size", f"{r.size / 1024:.1f} KiB"),
            ("Created", (r.created or "-")[:19].replace("T", " ")),
            ("Tags", ", ".join(r.tags) or "-"),
        ]
        for key, label in (
            ("mscore_before", "M-Score before"),
            ("mscore_after", "M-Score after"),
            ("retention_before", "Retention before"),
            ("retention_after", "Retention after"),
        ):
            e = (r.scores or {}).get(key)
            if isinstance(e, dict):
                rows.append((label, f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"))
        hp = r.hyperparameters or {}
        for key, label in (
            ("steps", "Steps"),
            ("lr", "Learning rate"),
            ("trainable", "Trainable"),
            ("mode", "Mode"),
            ("positions", "Positions"),
            ("seconds", "Training time (s)"),
        ):
            if key in hp:
                rows.append((label, f"{hp[key]:g}" if isinstance(hp[key], float) else str(hp[key])))
        reg = self.session.registry()
        for e in self.evaluations(r):
            in_file = (r.scores or {}).get(f"{e.metric}_after")
            if isinstance(in_file, dict) and in_file.get("mean") == e.value:
                continue  # the same figure as the file's, shown above
            rows.append((evaluation_label(e), evaluation_text(e)))
        used = self.session.attempt("Registry", lambda: reg.stacks_using(r.id)) if reg else None
        rows.append(("Used by stacks", ", ".join(used or []) or "none"))
        if r.notes:
            rows.append(("Notes", r.notes))
        return rows

    def evaluations(self, record=None) -> list:
        """The registry's stored evaluations of the patch (attack checks, scores), oldest
        first."""
        r = record or self.selected
        reg = self.session.registry()
        if r is None or reg is None:
            return []
        return self.session.attempt("Registry", lambda: reg.evaluations(patch=r.id)) or []

    # -------------------------------------------------------------- actions
    def import_file(self, path: str):
        """Register a patch file made elsewhere, in the background (`fmn patches import`):
        ours as is; kohya/PEFT/.diff/absolute files checked against the loaded model."""
        root, model = self.session.settings.data_folder, self.session.model

        def finished(outcome):
            rec = outcome.record
            self.session.post(
                (
                    f"Imported {rec.name} ({outcome.source_format})"
                    if outcome.new
                    else f"{rec.name} was already in the library"
                ),
                self.view,
            )
            self.session.registry_changed.emit()
            self.select_name(rec.name)
            self.imported.emit(rec)

        return self.session.run_job(
            f"import {Path(path).name}",
            lambda ctx: _import_job(ctx, root, path, model),
            on_finished=finished,
            view=self.view,
        )

    def export_selected(
        self, dest: str, fmt: str = "original", overwrite: bool = True
    ) -> Path | None:
        """Write the selected patch (hash-checked): as stored, or converted to LoRA / .diff.
        `overwrite`: the save dialog has already asked before replacing a file."""
        from fmn_desktop.services.library import export_patch

        r = self.selected
        reg = self.session.registry()
        if r is None or reg is None:
            self.session.report("Nothing selected", "select a patch to export")
            return None
        out = self.session.attempt(
            "Export failed", lambda: export_patch(reg, r.id, dest, fmt, overwrite=overwrite)[0]
        )
        if out is not None:
            self.session.post(f"Exported {r.name} to {out}", self.view)
        return out

    def delete_selected(self, cascade: bool = False) -> bool:
        r = self.selected
        reg = self.session.registry()
        if r is None or reg is None:
            return False
        done = self.session.attempt(
            "Cannot delete", lambda: reg.remove_patch(r.id, cascade=cascade)
        )
        if done is None:
            return False
        self.selected = None
        self.session.post(f"Deleted {r.name}", self.view)
        self.session.registry_changed.emit()
        return True

    def attack_refusal(self, record=None) -> str | None:
        """Why the selected patch is not one for the attack check (a correction), or None."""
        from fmn_desktop.services.attack import attack_refusal

        r = record or self.selected
        return attack_refusal(r) if r is not None else None

    def stacks_using_selected(self) -> list[str]:
        r, reg = self.selected, self.session.registry()
        if r is None or reg is None:
            return []
        return self.session.attempt("Registry", lambda: reg.stacks_using(r.id)) or []

    def measure_selected(self, seeds: int | None = None, steps: int = 20):
        """M-Score and retention of the selected patch on the embedded model, stored with it
        in the registry (background; `fmn evaluate --record`)."""
        from fmn_desktop.services.evaluate import EvaluateRequest, evaluate_job
        from fmn_desktop.services.patches import PatchItem, PatchSpec

        r = self.selected
        model = self.session.require_model()
        if r is None or model is None:
            return None
        if not r.concepts:
            self.session.report("No concept", f"{r.name} names no concept to measure")
            return None
        root, item = self.session.settings.data_folder, PatchItem.from_record(r)
        seeds = seeds or self.session.settings.eval_seeds

        req = EvaluateRequest(
            list(r.concepts),
            [PatchSpec(Path(item.path), item.strength)],
            seeds=seeds,
            steps=steps,
            record=r.id,
            registry_root=root,
        )

        def finished(done):
            scores = done.scores
            a, b = scores["mscore_after"]["mean"], scores["retention_after"]["mean"]
            text = f"Measured {r.name}: M-Score {a:.3f}, retention {b:.3f}"
            if "coattr_after" in scores:
                text += (
                    f", other words kept {scores['coattr_after']['mean']:.3f}, worst neighbour "
                    f"{scores['worst_neighbour']} -{100 * scores['worst_neighbour_drop']:.0f} pts"
                )
            self.session.post(text, self.view)
            self.session.registry_changed.emit()

        return self.session.run_job(
            f"measure {r.name}",
            lambda ctx: evaluate_job(ctx, model, req),
            on_finished=finished,
            view=self.view,
        )

    def make_preview(self, seeds: int = 3, steps: int = 20):
        """Before/after thumbnails of the selected patch on the loaded model (background)."""
        from fmn_desktop.services.images import CompareRequest, compare_job
        from fmn_desktop.services.patches import PatchItem

        r = self.selected
        model = self.session.require_model()
        if r is None or model is None:
            return None
        concept = r.concepts[0] if r.concepts else "a photo"
        req = CompareRequest(
            prompts=[f"a photo of {concept}"],
            seeds=list(range(seeds)),
            patches=[PatchItem.from_record(r)],
            steps=steps,
            title=r.name,
            labelled=False,
        )

        def finished(done):
            self._previews[r.sha256] = done
            if self.selected is not None and self.selected.sha256 == r.sha256:
                self.preview = done

        return self.session.run_job(
            "preview",
            lambda ctx: compare_job(ctx, model, req),
            on_finished=finished,
            view=self.view,
        )


def _import_job(ctx, root, path, model):
    """The library service's import, its "give --model" advice worded for the app."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.services.library import import_job

    try:
        return (yield from import_job(ctx, root, path, model))
    except FmnError as exc:
        if model is None and "(--model)" in str(exc):
            raise FmnError(
                str(exc).replace("(--model)", "(load it on the Model page first)")
            ) from exc
        raise

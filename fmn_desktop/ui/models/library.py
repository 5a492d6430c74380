"""The registry browser: searchable, sortable patches with details, import, export, delete."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

COLUMNS = ("Name", "Concepts", "Kind", "Method", "M-Score after", "Retention", "Size", "Added")
SORT_KEYS = ("name", "concepts", "kind", "method", "mscore", "retention", "size", "added")


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
        record.method,
        _score(record, "mscore_after"),
        _score(record, "retention_after"),
        record.size,
        (record.added or "")[:16].replace("T", " "),
    ]


class LibraryModel(QObject):
    query_changed = Signal(str)
    sort_key_changed = Signal(str)
    descending_changed = Signal(bool)
    patches_changed = Signal(object)  # list[PatchRecord]
    selected_changed = Signal(object)  # PatchRecord | None
    stacks_changed = Signal(object)

    query = state("query", str, "", query_changed)
    sort_key = state("sort_key", str, "added", sort_key_changed)
    descending = state("descending", bool, True, descending_changed)
    patches = state("patches", list, [], patches_changed)
    selected = state("selected", object, None, selected_changed)
    stacks = state("stacks", list, [], stacks_changed)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.query_changed.connect(self.refresh)
        self.sort_key_changed.connect(self.refresh)
        self.descending_changed.connect(self.refresh)
        session.registry_changed.connect(self.refresh)

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
            return (v is None, v if v is not None else 0)

        records.sort(key=sort_value, reverse=self.descending)
        self.patches = records
        self.stacks = self.session.attempt("Registry", reg.list_stacks) or []
        if self.selected is not None:
            same = [r for r in records if r.id == self.selected.id]
            self.selected = same[0] if same else None

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
        for key in ("steps", "lr", "trainable", "mode", "positions", "seconds"):
            if key in hp:
                rows.append((key.capitalize(), str(hp[key])))
        reg = self.session.registry()
        used = self.session.attempt("Registry", lambda: reg.stacks_using(r.id)) if reg else None
        rows.append(("Used by stacks", ", ".join(used or []) or "none"))
        if r.notes:
            rows.append(("Notes", r.notes))
        return rows

    # -------------------------------------------------------------- actions
    def import_file(self, path: str, tags: list[str] | None = None):
        """Register a patch file made elsewhere (ours, kohya LoRA, .diff); None on error."""
        from fmn_desktop.workflows import describe_patch

        reg = self.session.registry()
        if reg is None:
            return None

        def do():
            describe_patch(path)  # a damaged or foreign file fails here, with a clear message
            return reg.add_patch(Path(path), tags=tags or [], source=str(path))

        record = self.session.attempt(f"Cannot import {Path(path).name}", do)
        if record is not None:
            self.session.status = f"Imported {record.name}"
            self.session.registry_changed.emit()
            self.select_name(record.name)
        return record

    def export_selected(self, dest: str) -> Path | None:
        """Copy the selected patch's file (checked against its hash) to `dest`."""
        r = self.selected
        reg = self.session.registry()
        if r is None or reg is None:
            self.session.report("Nothing selected", "select a patch to export")
            return None

        def do():
            from fmn_desktop.patch.format import atomic_write_bytes

            target = Path(dest)
            if target.is_dir():
                target = target / f"{r.name}.safetensors"
            atomic_write_bytes(target, reg.read_patch_bytes(r.id))
            return target

        out = self.session.attempt("Export failed", do)
        if out is not None:
            self.session.status = f"Exported {r.name} to {out}"
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
        self.session.status = f"Deleted {r.name}"
        self.session.registry_changed.emit()
        return True

    def stacks_using_selected(self) -> list[str]:
        r, reg = self.selected, self.session.registry()
        if r is None or reg is None:
            return []
        return self.session.attempt("Registry", lambda: reg.stacks_using(r.id)) or []

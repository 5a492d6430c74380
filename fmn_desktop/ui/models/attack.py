"""The attack check's state: which library patch and concept, the search's settings, live
progress, cancel, and the report (before/after figures, best prompts' images)."""

from __future__ import annotations

from PySide6.QtCore import Signal

from fmn_desktop.services.attack import (
    AttackDone,
    AttackRequest,
    attack_job,
    attack_refusal,
    attackable_patches,
)
from fmn_desktop.ui.models.job import JobModel, capitalized
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state


def summary_rows(report) -> list[tuple[str, str, str]]:
    """(figure, before, after) for the page's table: the rows of `attack.format_table`."""
    s, b, a = report.settings, report.before, report.after
    rows = [
        ("No-attack success", str(b.no_attack()), str(a.no_attack())),
        ("Attack success rate (ASR)", str(b.asr()), str(a.asr())),
        ("Mean best presence", f"{b.mean_best_presence():.3f}", f"{a.mean_best_presence():.3f}"),
        ("Mean images per target", f"{b.mean_queries():.1f}", f"{a.mean_queries():.1f}"),
    ]
    chance = a.chance()
    if chance is not None:
        rows.append(("Chance rate per image", "–", str(chance)))
        rows.append((f"Chance ASR at budget {s.budget}", "–", str(a.chance_asr(s.budget))))
    sb, sa = b.soft(), a.soft()
    if sb is not None or sa is not None:
        rows.append(("Soft prompt (not text)", str(sb) if sb else "–", str(sa) if sa else "–"))
    rows.append(("Seconds", f"{b.seconds:.1f}", f"{a.seconds:.1f}"))
    return rows


class AttackModel(JobModel):
    view = "attack"  # the page its status messages belong to
    record_changed = Signal(object)  # PatchRecord | None
    concept_changed = Signal(str)
    budget_changed = Signal(int)
    seeds_changed = Signal(int)
    steps_changed = Signal(int)
    whitebox_changed = Signal(bool)
    chance_changed = Signal(int)
    log_changed = Signal(object)  # list[str]
    notice_changed = Signal(str)

    record = state("record", object, None, record_changed)
    concept = state("concept", str, "", concept_changed)
    budget = state("budget", int, 64, budget_changed)
    seeds = state("seeds", int, 2, seeds_changed)
    steps = state("steps", int, 20, steps_changed)
    whitebox = state("whitebox", bool, True, whitebox_changed)
    chance = state("chance", int, 16, chance_changed)
    log = state("log", list, [], log_changed)
    notice = state("notice", str, "", notice_changed)  # why the patch asked for is not attacked

    cancelled_text = "Cancelled: nothing was recorded"

    def __init__(self, session: Session, parent=None):
        super().__init__(session, parent)
        self.extra: dict = {}  # other AttackSettings fields (tests and power users)

    def patches(self) -> list:
        """The library's patches an attack check applies to (forget patches), newest first."""
        reg = self.session.registry()
        found = self.session.attempt("Registry", lambda: attackable_patches(reg)) if reg else None
        return found or []

    def use_patch(self, record) -> None:
        """Attack this library patch; its first concept the judge knows is the target. A patch
        the check does not apply to (a correction) is not taken: `notice` says why."""
        refusal = attack_refusal(record) if record is not None else None
        self.notice = refusal or ""
        self.record = None if refusal else record
        self.result = None
        self.result_text = ""
        if self.record is None:
            return
        from fmn_desktop.toyworld import CONCEPTS

        known = [c for c in record.concepts if c in CONCEPTS]
        self.concept = known[0] if known else (record.concepts[0] if record.concepts else "")

    def settings(self):
        from fmn_desktop.attack import AttackSettings

        return AttackSettings(
            budget=self.budget,
            seeds=self.seeds,
            steps=self.steps,
            whitebox=self.whitebox,
            soft=self.whitebox,
            chance=self.chance,
            **self.extra,
        )

    def start(self):
        """Attack the patch's concept before and after it; record the figures with it."""
        model = self.session.require_model()
        if model is None:
            return None
        r = self.record
        if r is None:
            self.session.report(
                "No patch", self.notice or "choose a forget patch to attack (Patch, above)"
            )
            return None
        if not self.concept.strip():
            self.session.report("No concept", "this patch names no concept to attack")
            return None
        settings = self.session.attempt("Invalid settings", self.settings)
        if settings is None:
            return None
        req = AttackRequest(
            patches=[],  # the registry's copy of the record
            concept=self.concept.strip(),
            settings=settings,
            registry_root=self.session.settings.data_folder,
            record=r.id,
        )
        self.log = []
        return self._start_job("attack check", lambda ctx: attack_job(ctx, model, req), 0)

    def _on_progress(self, p) -> None:
        self.total = p.total
        self.step = p.step
        if p.step and p.phase == "attack":
            self.log = [*self.log, p.text]
            self.phase_text = f"Attacked {p.step} of {p.total} targets"
        else:
            self.phase_text = capitalized(p.text)

    def _result_lines(self, done: AttackDone) -> list[str]:
        rep = done.report
        lines = [f"ASR {rep.before.asr()} before, {rep.after.asr()} after the patch."]
        if done.rows:
            lines.append(f"Recorded {', '.join(r.metric for r in done.rows)} with the patch.")
        return lines

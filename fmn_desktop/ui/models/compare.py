"""The compare view's state: prompts and seeds, the base model beside the patched one."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from fmn_desktop.services.images import CompareDone, CompareRequest, compare_job
from fmn_desktop.services.patches import PatchItem
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state


class CompareModel(QObject):
    view = "compare"  # the page its status messages belong to
    prompts_changed = Signal(str)
    seeds_changed = Signal(int)
    first_seed_changed = Signal(int)
    steps_changed = Signal(int)
    guidance_changed = Signal(float)
    patches_changed = Signal(object)  # list[PatchItem]
    patch_label_changed = Signal(str)
    mode_changed = Signal(str)
    running_changed = Signal(bool)
    progress_changed = Signal(int)
    result_changed = Signal(object)  # CompareDone | None

    prompts = state("prompts", str, "a photo of a castle", prompts_changed)
    seeds = state("seeds", int, 4, seeds_changed)
    first_seed = state("first_seed", int, 0, first_seed_changed)
    steps = state("steps", int, 20, steps_changed)
    guidance = state("guidance", float, 5.0, guidance_changed)
    patches = state("patches", list, [], patches_changed)
    patch_label = state("patch_label", str, "No patch chosen", patch_label_changed)
    mode = state("mode", str, "additive", mode_changed)
    running = state("running", bool, False, running_changed)
    progress = state("progress", int, 0, progress_changed)
    result = state("result", object, None, result_changed)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.force = False  # apply a stack despite its conflicts (the composer's choice)

    def library(self) -> list:
        """Registered patches that can be compared (newest first)."""
        reg = self.session.registry()
        records = self.session.attempt("Registry", reg.list_patches) if reg else None
        return sorted(records or [], key=lambda r: r.id, reverse=True)

    def use_none(self) -> None:
        self.patches = []
        self.patch_label = "No patch chosen"

    def prompt_list(self) -> list[str]:
        return [p.strip() for p in self.prompts.splitlines() if p.strip()]

    def use_patch(self, record) -> None:
        """Compare against one registered patch (a PatchRecord) at full strength."""
        self.force = False
        self.patches = [PatchItem.from_record(record)]
        self.mode = "additive"
        self.patch_label = f"Patch: {record.name}"
        if record.concepts:
            self.prompts = "\n".join([f"a photo of {record.concepts[0]}"] + self.prompt_list()[1:2])

    def use_stack(self, items: list[PatchItem], mode: str, label: str, force: bool = False) -> None:
        self.force = force
        self.patches = list(items)
        self.mode = mode
        self.patch_label = label

    def run(self):
        model = self.session.require_model()
        if model is None:
            return None
        prompts = self.prompt_list()
        if not prompts:
            self.session.report("No prompt", "type at least one prompt (one per line)")
            return None
        req = CompareRequest(
            prompts=prompts,
            seeds=list(range(self.first_seed, self.first_seed + max(1, self.seeds))),
            patches=list(self.patches),
            mode=self.mode,
            steps=self.steps,
            guidance=self.guidance,
            force=self.force,
            title=self.patch_label.split(": ", 1)[-1] if self.patches else "no patch",
        )
        self.progress = 0
        job = self.session.run_job(
            "compare",
            lambda ctx: compare_job(ctx, model, req),
            on_progress=self._on_progress,
            on_finished=self._on_finished,
            on_done=lambda: setattr(self, "running", False),
            view=self.view,
        )
        if job is not None:
            self.running = True
        return job

    def cancel(self) -> None:
        self.session.cancel_job()

    def _on_progress(self, p) -> None:
        if p.total:
            self.progress = int(100 * p.step / p.total)

    def _on_finished(self, done: CompareDone) -> None:
        self.progress = 100
        self.result = done
        self.session.post("Comparison ready", self.view)

"""What the job pages' models (forget, correct, attack) share: running one job through the
session, its live progress, cancel, and the result's summary.

Each subclass keeps its own settings and checks, and says how its progress and result read."""

from __future__ import annotations

import math

from PySide6.QtCore import QObject, Signal

from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state


def capitalized(text: str) -> str:
    """The job's phase text as a sentence (jobs word it for logs, in lower case)."""
    return text[:1].upper() + text[1:]


class JobModel(QObject):
    running_changed = Signal(bool)
    step_changed = Signal(int)
    total_changed = Signal(int)
    phase_text_changed = Signal(str)
    result_changed = Signal(object)  # the job's *Done | None
    result_text_changed = Signal(str)
    finished = Signal(object)  # the job's *Done
    cancelled = Signal()

    running = state("running", bool, False, running_changed)
    step = state("step", int, 0, step_changed)
    total = state("total", int, 0, total_changed)
    phase_text = state("phase_text", str, "Not started", phase_text_changed)
    result = state("result", object, None, result_changed)
    result_text = state("result_text", str, "", result_text_changed)

    cancelled_text = "Cancelled: nothing was written"
    view = ""  # the page its status messages belong to (each subclass names its own)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.job = None

    def _start_job(self, name: str, work, total: int):
        """Forget the last run's progress and result, then run `work(ctx)` as the session's
        job; None where the session refused it (another job runs)."""
        self.step = 0
        self.total = total
        self.result = None
        self.result_text = ""
        self.phase_text = "Starting"
        job = self.session.run_job(
            name,
            work,
            on_progress=self._on_progress,
            on_finished=self._on_finished,
            on_failed=lambda msg, det: setattr(self, "phase_text", f"Failed: {msg}"),
            on_cancelled=self._on_cancelled,
            on_done=lambda: setattr(self, "running", False),
            view=self.view,
        )
        if job is not None:
            self.job = job
            self.running = True
        return job

    def cancel(self) -> None:
        if self.running:
            self.session.cancel_job()
            self.phase_text = "Cancelling ..."

    def _on_progress(self, p) -> None:
        raise NotImplementedError

    def _result_lines(self, done) -> list[str]:
        """The result's summary, a sentence a line; the first two also go to the status bar."""
        raise NotImplementedError

    def _on_finished(self, done) -> None:
        self.result = done
        lines = self._result_lines(done)
        self.result_text = " ".join(lines)
        self.phase_text = "Done"
        self.session.post(" ".join(lines[:2]), self.view)
        self.session.registry_changed.emit()  # the job registered a patch or its figures
        self.finished.emit(done)

    def _on_cancelled(self, msg: str) -> None:
        self.phase_text = self.cancelled_text
        self.cancelled.emit()


class PatchJobModel(JobModel):
    """A job that trains (or solves for) a patch, reporting a loss per step."""

    losses_changed = Signal(object)  # list[float]
    losses = state("losses", list, [], losses_changed)

    training_verb = "Training"  # the phase text's word for the steps
    _bar_on_references = False  # the bar counts reference images until the first step

    def _start_job(self, name: str, work, total: int):
        self.losses = []
        return super()._start_job(name, work, total)

    def _on_progress(self, p) -> None:
        if p.phase == "references":  # counted per image drawn, the bar with them
            self.phase_text = "Preparing reference images"
            if p.total:
                self.phase_text += f": {p.step} of {p.total}"
                self.total = p.total
                self.step = p.step
                self._bar_on_references = True
            return
        if p.phase == "attack":  # a hardening round between two trainings
            self.phase_text = "Attacking the patch (hardening)"
            return
        if p.loss is None:  # the job's own line between the steps
            self.phase_text = capitalized(p.text)
            return
        if self._bar_on_references:  # the bar starts again from 0 for the steps
            self._bar_on_references = False
            self.step = 0
        self.phase_text = f"{self.training_verb}: step {p.step} of {p.total}"
        self.total = p.total
        self.step = p.step
        if p.loss is not None and math.isfinite(p.loss):
            self.losses = [*self.losses, float(p.loss)]

"""The correction page's state: a closed-form correction (concept -> guide, away from a
negative), a disentangling (a generic concept away from the identity it draws) or a broad
removal (words, steps), its progress, cancel, and the result."""

from __future__ import annotations

from PySide6.QtCore import Signal

from fmn_desktop.services.correct import (
    CorrectDone,
    CorrectRequest,
    broad_job,
    correct_job,
    disentangle_job,
)
from fmn_desktop.ui.models.job import PatchJobModel
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

MODES = ("correct", "broad", "disentangle")
MODE_LABELS = {
    "correct": "Redirect a concept (closed form)",
    "broad": "Remove an attribute broadly (fine-tune)",
    "disentangle": "Free a generic concept from one identity (fine-tune)",
}
FORMAT_LABELS = {"diff": "Exact deltas (.diff)", "lora": "Low-rank (LoRA)"}


class CorrectModel(PatchJobModel):
    view = "correct"  # the page its status messages belong to
    mode_changed = Signal(str)
    concept_changed = Signal(str)
    guide_changed = Signal(str)
    negative_changed = Signal(str)
    strength_changed = Signal(float)
    words_changed = Signal(str)
    dominant_changed = Signal(str)
    away_changed = Signal(float)
    steps_changed = Signal(int)
    fmt_changed = Signal(str)
    save_copy_changed = Signal(str)

    mode = state("mode", str, "correct", mode_changed)
    concept = state("concept", str, "", concept_changed)
    guide = state("guide", str, "", guide_changed)
    negative = state("negative", str, "", negative_changed)
    strength = state("strength", float, 0.0, strength_changed)
    words = state("words", str, "", words_changed)
    dominant = state("dominant", str, "", dominant_changed)
    away = state("away", float, 4.0, away_changed)  # DisentangleConfig.strength
    steps = state("steps", int, 150, steps_changed)
    fmt = state("fmt", str, "diff", fmt_changed)
    save_copy = state("save_copy", str, "", save_copy_changed)

    training_verb = "Removing"

    def __init__(self, session: Session, parent=None):
        super().__init__(session, parent)
        # Extra CorrectConfig / BroadConfig fields (tests and power users).
        self.extra: dict = {}

    def word_list(self) -> list[str]:
        return [w.strip() for w in self.words.split(",") if w.strip()]

    def config(self):
        """The CorrectConfig, BroadConfig or DisentangleConfig of the page's fields (raises
        ValueError)."""
        if self.mode == "disentangle":
            from fmn_desktop.correct.disentangle import DisentangleConfig

            return DisentangleConfig(
                concept=self.concept, dominant=self.dominant, strength=self.away, **self.extra
            )
        if self.mode == "broad":
            from fmn_desktop.correct.broad import BroadConfig

            return BroadConfig(words=self.word_list(), steps=self.steps, **self.extra)
        from fmn_desktop.correct.closed_form import CorrectConfig

        return CorrectConfig(
            concept=self.concept.strip(),
            guide=self.guide.strip(),
            negative=self.negative.strip() or None,
            strength=self.strength,
            **self.extra,
        )

    def start(self):
        """Start the correction or broad-removal job (solve or train, register)."""
        model = self.session.require_model()
        if model is None:
            return None
        if self.mode == "broad" and not self.word_list():
            self.session.report(
                "No words", "type the words that draw the attribute, separated by commas"
            )
            return None
        if self.mode == "correct" and not (self.concept.strip() and self.guide.strip()):
            self.session.report("No concept", "type the concept and the guide it should read as")
            return None
        if self.mode == "disentangle" and not (self.concept.strip() and self.dominant.strip()):
            self.session.report(
                "No concept", "type the generic concept and the identity it draws instead"
            )
            return None
        config = self.session.attempt("Invalid settings", self.config)
        if config is None:
            return None
        req = CorrectRequest(
            config=config,
            fmt=self.fmt,
            registry_root=self.session.settings.data_folder,
            reference_cache=self.session.settings.data_folder,
            out=self.save_copy or None,
            tags=[self.mode],
        )
        return self.start_request(req)

    def start_request(self, req: CorrectRequest):
        model = self.session.require_model()
        if model is None:
            return None
        from fmn_desktop.correct.broad import BroadConfig
        from fmn_desktop.correct.disentangle import DisentangleConfig

        if isinstance(req.config, DisentangleConfig):
            what, run, total = "disentangle", disentangle_job, req.config.forget_config([]).steps
        elif isinstance(req.config, BroadConfig):
            what, run, total = "broad removal", broad_job, req.config.steps
        else:
            what, run, total = "correct", correct_job, 1
        return self._start_job(what, lambda ctx: run(ctx, model, req), total)

    def _on_finished(self, done: CorrectDone) -> None:
        if not done.losses:  # closed form: one solve
            self.step = self.total = 1
        super()._on_finished(done)

    def _result_lines(self, done: CorrectDone) -> list[str]:
        lines = [f"Finished in {done.seconds:.1f} s."]
        if done.record is not None:
            lines.append(f"Registered as '{done.record.name}'.")
        if done.path is not None:
            lines.append(f"Saved a copy to {done.path}.")
        r = done.report
        if r:
            lines.append(
                f"Objective {r['objective_before']:.4g} → {r['objective_after']:.4g}; "
                f"preservation drift {r['preserve_drift']:.4f}; concept energy outside the "
                f"preserved span {r['outside_preserve_span']:.3f}."
            )
        elif done.losses:
            lines.append(f"Final loss {done.losses[-1]:.4f}.")
        return lines

"""The forget wizard's state: the job's settings, its live progress and loss curve, cancel."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal

from fmn_desktop.resteer.forget import FAITHFUL_STEPS
from fmn_desktop.services.forget import ForgetDone, ForgetRequest, forget_job
from fmn_desktop.ui.models.job import PatchJobModel
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

KINDS = ("object", "style", "identity")
TRAINABLE = ("kv", "attn2", "unet")
MODES = ("faithful", "fast")
TRAINABLE_LABELS = {
    "kv": "Cross-attention K/V (recommended)",
    "attn2": "All of cross-attention",
    "unet": "Whole UNet (slow, risky)",
}
MODE_LABELS = {
    "faithful": "Faithful (through the whole UNet)",
    "fast": "Fast (per-layer K, cached queries)",
}


class ForgetModel(PatchJobModel):
    view = "forget"  # the page its status messages belong to
    concept_changed = Signal(str)
    concept_kind_changed = Signal(str)
    reference_dir_changed = Signal(str)
    anchor_changed = Signal(str)
    trainable_changed = Signal(str)
    mode_changed = Signal(str)
    steps_changed = Signal(int)
    evaluate_changed = Signal(bool)
    harden_changed = Signal(int)
    save_copy_changed = Signal(str)

    concept = state("concept", str, "", concept_changed)
    concept_kind = state("concept_kind", str, "object", concept_kind_changed)
    reference_dir = state("reference_dir", str, "", reference_dir_changed)
    anchor = state("anchor", str, "", anchor_changed)  # "" : the concept is removed
    trainable = state("trainable", str, "kv", trainable_changed)
    mode = state("mode", str, "faithful", mode_changed)
    steps = state("steps", int, FAITHFUL_STEPS, steps_changed)
    evaluate = state("evaluate", bool, True, evaluate_changed)
    harden = state("harden", int, 0, harden_changed)  # adversarial rounds (fmn forget --harden)
    save_copy = state("save_copy", str, "", save_copy_changed)

    training_verb = "Re-steering"

    def __init__(self, session: Session, parent=None):
        super().__init__(session, parent)
        # Extra ForgetConfig fields (tests and power users); the wizard shows the common ones.
        self.extra: dict = {}
        self.eval_steps = 20  # sampler steps of the evaluation images
        self.eval_others: int | None = None  # retention over all other concepts

    def suggestions(self) -> list[str]:
        """Concept names the loaded model is known to draw (the embedded model's world)."""
        m = self.session.model
        if m is None or not m.has_judge:
            return []
        from fmn_desktop.toyworld import CONCEPTS

        return sorted(CONCEPTS, key=str.lower)

    def concepts(self) -> list[str]:
        return [c.strip() for c in self.concept.split(",") if c.strip()]

    def config(self):
        """The ForgetConfig of the wizard's fields; on the embedded model the unset fields take
        the toy world's defaults (`with_model_defaults`), as `fmn forget` and `fmn demo` do."""
        from fmn_desktop.resteer import ForgetConfig
        from fmn_desktop.services.defaults import with_model_defaults

        config = ForgetConfig(
            concepts=self.concepts(),
            concept_kind=self.concept_kind,
            steps=self.steps,
            trainable=self.trainable,
            mode=self.mode,
            reference_dir=self.reference_dir or None,
            anchor=self.anchor.strip(),
            **self.extra,
        )
        return with_model_defaults(self.session.model, config)

    def start(self):
        """Start the forget job (train, evaluate on the embedded model, register)."""
        model = self.session.require_model()
        if model is None:
            return None
        if not self.concepts():
            self.session.report(
                "No concept", "type the concept to forget, as it appears in prompts"
            )
            return None
        if self.reference_dir and not Path(self.reference_dir).is_dir():
            self.session.report("Reference folder", f"{self.reference_dir} is not a folder")
            return None
        config = self.session.attempt("Invalid settings", self.config)
        if config is None:
            return None
        req = ForgetRequest(
            config=config,
            evaluate=self.evaluate,
            eval_seeds=self.session.settings.eval_seeds,
            eval_steps=self.eval_steps,
            eval_others=self.eval_others,
            registry_root=self.session.settings.data_folder,
            reference_cache=self.session.settings.data_folder,
            out=self.save_copy or None,
            harden=self.harden,
            overwrite=True,  # the copy is chosen in a save dialog, which asks before replacing
        )
        return self.start_request(req)

    def start_request(self, req: ForgetRequest):
        model = self.session.require_model()
        if model is None:
            return None
        total = req.config.steps * (1 + req.harden)
        return self._start_job("forget", lambda ctx: forget_job(ctx, model, req), total)

    def _result_lines(self, done: ForgetDone) -> list[str]:
        lines = [f"Finished in {done.seconds:.1f} s, final loss {done.final_loss:.4f}."]
        if done.record is not None:
            lines.append(f"Registered as '{done.record.name}'.")
        if done.path is not None:
            lines.append(f"Saved a copy to {done.path}.")
        s = done.scores
        if not s and self.evaluate:
            lines.append(
                "Not scored: M-Score and retention need the embedded model and one of its concepts."
            )
        if s:
            mb, ma = s["mscore_before"]["mean"], s["mscore_after"]["mean"]
            rb, ra = s["retention_before"]["mean"], s["retention_after"]["mean"]
            lines.append(f"M-Score {mb:.2f} → {ma:.2f}; retention {rb:.2f} → {ra:.2f}.")
        return lines

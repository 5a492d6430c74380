"""The Forget-from-photos page's state: a folder of photos of one subject, the token to learn
for it, names to forget with it; `workflows.forget_from_photos` as a job (inversion, name
discovery, re-steering), its progress, cancel, and what it reports."""

from __future__ import annotations

import math
from pathlib import Path

from PySide6.QtCore import Signal

from fmn_desktop.services.photos import PhotosDone, PhotosRequest, photos_job
from fmn_desktop.ui.models.job import PatchJobModel, capitalized
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

FORMAT_LABELS = {"lora": "Low-rank (LoRA)", "diff": "Exact deltas (.diff)"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}  # resteer.encode.load_reference_dir's
STAGE_TEXT = {
    "inversion": "Learning the token",
    "references": "Preparing reference images",
    "forget": "Forgetting",
}


def _default(cls, name: str):
    return cls.__dataclass_fields__[name].default


def _inversion_steps() -> int:
    from fmn_desktop.inversion import InversionConfig

    return _default(InversionConfig, "steps")


def _forget_steps() -> int:
    from fmn_desktop.resteer.forget import FAITHFUL_STEPS

    return FAITHFUL_STEPS


class PhotosModel(PatchJobModel):
    view = "photos"  # the page its status messages belong to
    images_changed = Signal(str)
    token_changed = Signal(str)
    names_changed = Signal(str)
    inversion_steps_changed = Signal(int)
    steps_changed = Signal(int)
    discover_changed = Signal(bool)
    fmt_changed = Signal(str)
    save_copy_changed = Signal(str)

    images = state("images", str, "", images_changed)
    token = state("token", str, "<subject>", token_changed)
    names = state("names", str, "", names_changed)
    inversion_steps = state("inversion_steps", int, _inversion_steps(), inversion_steps_changed)
    steps = state("steps", int, _forget_steps(), steps_changed)
    discover = state("discover", bool, True, discover_changed)
    fmt = state("fmt", str, "lora", fmt_changed)
    save_copy = state("save_copy", str, "", save_copy_changed)

    training_verb = "Forgetting"

    def __init__(self, session: Session, parent=None):
        super().__init__(session, parent)
        # Extra InversionConfig / ForgetConfig fields (tests and power users).
        self.inversion_extra: dict = {}
        self.extra: dict = {}
        self._stage = ""

    def name_list(self) -> list[str]:
        return [n.strip() for n in self.names.split(",") if n.strip()]

    def configs(self):
        """The InversionConfig and ForgetConfig of the page's fields (raises on bad values)."""
        from fmn_desktop.inversion import InversionConfig
        from fmn_desktop.resteer import ForgetConfig

        token = self.token.strip()
        inversion = InversionConfig(
            placeholder=token, steps=self.inversion_steps, **self.inversion_extra
        )
        config = ForgetConfig(
            concepts=[token], concept_kind="identity", steps=self.steps, **self.extra
        )
        return inversion, config

    def _check_input(self) -> bool:
        """The folder, its images and the token; an error dialog and False when wrong."""
        folder = self.images.strip()
        if not folder:
            self.session.report("No photos", "choose the folder of photos of the subject")
            return False
        if not Path(folder).is_dir():
            self.session.report("No photos", f"{folder} does not exist or is not a folder")
            return False
        if not any(p.suffix.lower() in IMAGE_EXTS for p in Path(folder).iterdir()):
            self.session.report("No photos", f"no images (png, jpg, webp, bmp) in {folder}")
            return False
        from fmn_desktop.inversion.embedding import check_placeholder

        try:
            check_placeholder(self.token.strip())
        except Exception as exc:  # noqa: BLE001
            self.session.report_exception("Bad token", exc)
            return False
        return True

    def start(self):
        """Start the job: learn the token, find names, forget them all, register."""
        model = self.session.require_model()
        if model is None or not self._check_input():
            return None
        configs = self.session.attempt("Invalid settings", self.configs)
        if configs is None:
            return None
        inversion, config = configs
        root = self.session.settings.data_folder
        req = PhotosRequest(
            images=self.images.strip(),
            token=self.token.strip(),
            inversion=inversion,
            config=config,
            names=self.name_list(),
            discover=self.discover,
            fmt=self.fmt,
            registry_root=root,
            out=self.save_copy.strip() or None,
            tokens_dir=str(Path(root) / "tokens"),
            tags=["photos"],
        )
        return self.start_request(req)

    def start_request(self, req: PhotosRequest):
        model = self.session.require_model()
        if model is None:
            return None
        self._stage = ""
        return self._start_job(
            "forget from photos", lambda ctx: photos_job(ctx, model, req), req.inversion.steps
        )

    def _on_progress(self, p) -> None:
        stage = p.phase
        if stage == "names":
            self.phase_text = f"Finding names: {p.text}" if p.text else "Finding names"
            return
        if p.text and p.loss is None:  # the job's own line between the stages
            self.phase_text = capitalized(p.text)
            return
        if stage != self._stage:  # a new curve and bar for each stage
            self._stage = stage
            self.losses = []
            self.step = 0
        if not p.total:
            return
        self.phase_text = f"{STAGE_TEXT.get(stage, 'Training')}: step {p.step} of {p.total}"
        self.total = p.total
        self.step = p.step
        if p.loss is not None and math.isfinite(p.loss):
            self.losses = [*self.losses, float(p.loss)]

    def _result_lines(self, done: PhotosDone) -> list[str]:
        lines = [f"Finished in {done.seconds:.1f} s."]
        if done.record is not None:
            lines.append(f"Registered as '{done.record.name}'.")
        if done.num_vectors:
            lines.append(
                f"Learned {done.learned} ({done.num_vectors} vectors, denoising loss "
                f"{done.loss_before:.5f} → {done.loss_after:.5f})."
            )
        found = ", ".join(done.names_found) if done.names_found else "none"
        lines.append(f"Names found: {found}.")
        lines.append(f"Forgotten: {', '.join(done.concepts)}.")
        written = [self.session.display_path(p) for p in done.files]
        lines.append("Files written: " + ", ".join(written) + ".")
        return lines

"""Model picker: the embedded default model, recent checkpoints, a folder or a file."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from fmn_desktop.services.model import open_model
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

DEFAULT_SPEC = "default"


def spec_label(spec: str) -> str:
    if spec == DEFAULT_SPEC:
        return "Embedded toy model (built in)"
    p = Path(spec)
    return f"{p.name}  —  {p.parent}"


class ModelPickerModel(QObject):
    view = "model"  # the page its status messages belong to
    spec_changed = Signal(str)
    loading_changed = Signal(bool)
    loaded_label_changed = Signal(str)
    loaded = Signal(object)  # the LoadedModel

    spec = state("spec", str, DEFAULT_SPEC, spec_changed)
    loading = state("loading", bool, False, loading_changed)
    loaded_label = state("loaded_label", str, "No model loaded", loaded_label_changed)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session

    def choices(self) -> list[tuple[str, str]]:
        """(spec, label) rows: the embedded model first, then recent checkpoints."""
        rows = [(DEFAULT_SPEC, spec_label(DEFAULT_SPEC))]
        rows += [(r, spec_label(r)) for r in self.session.settings.recent_models if r != "default"]
        return rows

    def embedded_available(self) -> bool:
        from fmn_desktop.toyworld import weights_available

        return weights_available()

    def details(self) -> list[tuple[str, str]]:
        m = self.session.model
        if m is None:
            return []
        unet = m.pipe.unet
        params = sum(p.numel() for p in unet.parameters())
        return [
            ("Source", "embedded toy model" if m.embedded else str(m.source)),
            ("Family", m.family),
            ("Layout", m.source_kind),
            ("Prediction", m.prediction_type),
            ("Device", f"{m.device} · {str(m.dtype).replace('torch.', '')}"),
            ("UNet", f"{params / 1e6:.2f} M parameters"),
            ("Fingerprint", m.fingerprint or "-"),
        ] + [("Note", n) for n in m.notes]

    def load(self, spec: str | None = None):
        """Load `spec` (or the current one) in the background; the session gets the model."""
        spec = (spec or self.spec).strip()
        if not spec:
            self.session.report("No model chosen", "choose the embedded model, a folder or a file")
            return None
        self.spec = spec
        s = self.session.settings
        device, precision = s.device, s.precision

        def finished(model):
            self.session.set_model(model)
            if spec != DEFAULT_SPEC:
                s.add_recent(spec)
            reg = self.session.registry()
            if reg is not None and model.fingerprint:
                self.session.attempt(
                    "Registry",
                    lambda: reg.add_base_model(
                        model.fingerprint,
                        name=Path(str(model.source)).name,
                        path=str(model.source),
                        family=model.family,
                    ),
                )
            self.loaded_label = self.session.model_label()
            name = spec_label(spec) if spec == DEFAULT_SPEC else Path(spec).name
            self.session.post(f"Loaded {name}", self.view)
            self.loaded.emit(model)

        self.loading = True
        return self.session.run_job(
            "loading model",
            lambda ctx: open_model(spec, device=device, precision=precision),
            on_finished=finished,
            on_done=lambda: setattr(self, "loading", False),
            view=self.view,
        )

"""Fixtures for the desktop app's tests: one loaded model per session (the embedded one when
its weights are installed, else a tiny pipeline saved to disk and opened like a user's folder),
an app model with its own settings file and registry, and fast forget settings."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from ui_helpers import EMBEDDED  # noqa: E402


@pytest.fixture(scope="session")
def model_spec(tmp_path_factory) -> str:
    if EMBEDDED:
        return "default"
    from tiny import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def loaded_model(model_spec):
    """Loaded once through the loader every front end uses (services.model.open_model)."""
    from fmn_desktop.services.model import open_model

    return open_model(model_spec)


@pytest.fixture(scope="session")
def concept() -> str:
    return "circle" if EMBEDDED else "castle"


@pytest.fixture
def fast_forget() -> dict:
    """ForgetConfig extras that keep a job to a second or two on the CPU."""
    return dict(num_references=2, batch_size=2, reference_steps=3)


@pytest.fixture
def app(qtbot, tmp_path, loaded_model):
    """An AppModel with the session model set, settings and registry in tmp_path."""
    from fmn_desktop.ui.models import AppModel, SettingsModel

    state = AppModel(SettingsModel(tmp_path / "settings.json"))
    state.settings.data_folder = str(tmp_path / "registry")
    state.session.set_model(loaded_model)
    errors = []
    state.session.error_raised.connect(lambda *a: errors.append(a))
    state.errors = errors
    yield state
    state.close()

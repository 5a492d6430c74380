"""Settings: data folder (the registry), device, precision, evaluation seeds, theme, recents.

Stored as JSON (`settings.json` in the app's config folder, or the path given), so the file is
readable and the same in tests; no widget holds any of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from fmn_desktop.services.model import DEVICES, PRECISIONS  # one policy with the CLI
from fmn_desktop.ui.properties import state

THEMES = ("light", "dark")
MAX_RECENT = 8
CONFIG_ENV = "FMN_GUI_CONFIG"


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("forget-me-not-studio", appauthor=False)) / "settings.json"


def default_data_folder() -> str:
    from fmn_desktop.registry import registry_dir

    return str(registry_dir())


class SettingsModel(QObject):
    data_folder_changed = Signal(str)
    device_changed = Signal(str)
    precision_changed = Signal(str)
    eval_seeds_changed = Signal(int)
    theme_changed = Signal(str)
    recent_models_changed = Signal(object)

    data_folder = state("data_folder", str, "", data_folder_changed)
    device = state("device", str, "auto", device_changed)
    precision = state("precision", str, "auto", precision_changed)
    eval_seeds = state("eval_seeds", int, 2, eval_seeds_changed)
    theme = state("theme", str, "light", theme_changed)
    recent_models = state("recent_models", list, [], recent_models_changed)

    def __init__(self, path: str | os.PathLike | None = None, parent=None):
        super().__init__(parent)
        self.path = Path(path) if path else default_config_path()
        self.load()
        for sig in (
            self.data_folder_changed,
            self.device_changed,
            self.precision_changed,
            self.eval_seeds_changed,
            self.theme_changed,
            self.recent_models_changed,
        ):
            sig.connect(self.save)
        if not self.path.exists():
            self.save()  # a first start leaves a readable settings file to edit

    def load(self) -> None:
        data = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}  # a damaged settings file falls back to the defaults
        self.data_folder = data.get("data_folder") or default_data_folder()
        self.device = data.get("device") if data.get("device") in DEVICES else "auto"
        self.precision = data.get("precision") if data.get("precision") in PRECISIONS else "auto"
        self.eval_seeds = max(1, int(data.get("eval_seeds", 2) or 2))
        self.theme = data.get("theme") if data.get("theme") in THEMES else "light"
        recent = data.get("recent_models") or []
        self.recent_models = [str(r) for r in recent if isinstance(r, str)][:MAX_RECENT]

    def save(self, *_):
        data = dict(
            data_folder=self.data_folder,
            device=self.device,
            precision=self.precision,
            eval_seeds=self.eval_seeds,
            theme=self.theme,
            recent_models=self.recent_models,
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, self.path)
        except OSError:
            pass  # settings are a convenience; an unwritable config folder is not an error

    def add_recent(self, spec: str) -> None:
        items = [spec] + [r for r in self.recent_models if r != spec]
        self.recent_models = items[:MAX_RECENT]

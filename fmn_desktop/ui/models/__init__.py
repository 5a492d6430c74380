"""QObject models: the app's state and actions, with typed properties and `*_changed` signals.

Widgets bind to these and hold no state of their own; tests drive these directly.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from fmn_desktop.ui.models.attack import AttackModel
from fmn_desktop.ui.models.compare import CompareModel
from fmn_desktop.ui.models.correct import CorrectModel
from fmn_desktop.ui.models.forget import ForgetModel
from fmn_desktop.ui.models.library import LibraryModel
from fmn_desktop.ui.models.model_picker import ModelPickerModel
from fmn_desktop.ui.models.photos import PhotosModel
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.models.settings import SettingsModel
from fmn_desktop.ui.models.stack import StackModel


class AppModel(QObject):
    """Every view's model, sharing one session."""

    def __init__(self, settings: SettingsModel | None = None, parent=None):
        super().__init__(parent)
        self.session = Session(settings or SettingsModel(parent=self), parent=self)
        self.settings = self.session.settings
        self.picker = ModelPickerModel(self.session, self)
        self.library = LibraryModel(self.session, self)
        self.forget = ForgetModel(self.session, self)
        self.compare = CompareModel(self.session, self)
        self.stack = StackModel(self.session, self)
        self.correct = CorrectModel(self.session, self)
        self.attack = AttackModel(self.session, self)
        self.photos = PhotosModel(self.session, self)

    def close(self) -> None:
        self.session.close()


__all__ = [
    "AppModel",
    "AttackModel",
    "CompareModel",
    "CorrectModel",
    "ForgetModel",
    "LibraryModel",
    "ModelPickerModel",
    "PhotosModel",
    "Session",
    "SettingsModel",
    "StackModel",
]

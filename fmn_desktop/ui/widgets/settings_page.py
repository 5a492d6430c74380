"""Settings: where the registry lives, device and precision, evaluation, appearance."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.models.settings import SettingsModel
from fmn_desktop.ui.widgets.common import (
    bind_combo,
    bind_spin,
    bound_edit,
    card,
    page_header,
    section_label,
)


class SettingsPage(QWidget):
    def __init__(self, model: SettingsModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(page_header("Settings", "Saved as you change them."))
        box = card()
        box.setMaximumWidth(820)
        form = QFormLayout(box)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.addRow(section_label("Storage"))
        folder = QHBoxLayout()
        self.data_folder = bound_edit(model, "data_folder", on_finish=True)
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._browse)
        folder.addWidget(self.data_folder, 1)
        folder.addWidget(browse)
        form.addRow("Data folder (registry):", folder)
        form.addRow(section_label("Compute"))
        self.device = QComboBox()
        bind_combo(self.device, model, "device", {"cpu": "CPU", "cuda": "CUDA GPU"})
        form.addRow("Device:", self.device)
        self.precision = QComboBox()
        bind_combo(
            self.precision,
            model,
            "precision",
            {"fp32": "fp32 (CPU and GPU)", "fp16": "fp16 (GPU)", "bf16": "bf16 (GPU)"},
        )
        form.addRow("Precision:", self.precision)
        self.eval_seeds = QSpinBox()
        self.eval_seeds.setRange(1, 64)
        bind_spin(self.eval_seeds, model, "eval_seeds")
        form.addRow("Evaluation seeds per prompt:", self.eval_seeds)
        note = QLabel("Device and precision apply the next time a model is loaded.")
        note.setObjectName("placeholder")
        form.addRow("", note)
        form.addRow(section_label("Appearance"))
        self.theme = QComboBox()
        bind_combo(self.theme, model, "theme", {"light": "Light", "dark": "Dark"})
        form.addRow("Theme:", self.theme)
        lay.addWidget(box)
        lay.addStretch(1)

    def _browse(self):
        path = QFileDialog.getExistingDirectory(self, "Data folder", self.model.data_folder)
        if path:
            self.model.data_folder = path

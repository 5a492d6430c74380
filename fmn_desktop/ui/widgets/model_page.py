"""Model picker: the embedded default model, recent checkpoints, open a folder or a file."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.models.model_picker import DEFAULT_SPEC, ModelPickerModel
from fmn_desktop.ui.widgets.common import card, page_header, section_label


class ModelPage(QWidget):
    def __init__(self, model: ModelPickerModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(
            page_header(
                "Model",
                "Choose the checkpoint to work on: the embedded toy model, a diffusers folder or "
                "a single .safetensors file (SD 1.x, SD 2.x, SDXL). Nothing is downloaded.",
            )
        )
        row = QHBoxLayout()
        lay.addLayout(row, 1)

        left = card()
        ll = QVBoxLayout(left)
        ll.addWidget(section_label("Available models"))
        self.list = QListWidget()
        self.list.setObjectName("modelList")
        self.list.itemSelectionChanged.connect(self._picked)
        self.list.itemDoubleClicked.connect(lambda _: self.model.load())
        ll.addWidget(self.list, 1)
        buttons = QHBoxLayout()
        self.open_folder = QPushButton("Open folder…")
        self.open_folder.clicked.connect(self._open_folder)
        self.open_file = QPushButton("Open file…")
        self.open_file.clicked.connect(self._open_file)
        self.load_button = QPushButton("Load model")
        self.load_button.setObjectName("primary")
        self.load_button.setDefault(True)
        self.load_button.clicked.connect(lambda: self.model.load())
        buttons.addWidget(self.open_folder)
        buttons.addWidget(self.open_file)
        buttons.addStretch(1)
        buttons.addWidget(self.load_button)
        ll.addLayout(buttons)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.busy.setMaximumHeight(6)
        self.busy.hide()
        ll.addWidget(self.busy)
        row.addWidget(left, 3)

        right = card()
        rl = QVBoxLayout(right)
        rl.addWidget(section_label("Loaded model"))
        self.form_host = QWidget()
        self.form = QFormLayout(self.form_host)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        rl.addWidget(self.form_host)
        rl.addStretch(1)
        row.addWidget(right, 2)

        model.session.settings.recent_models_changed.connect(self._fill)
        model.loading_changed.connect(self._loading)
        model.session.model_changed.connect(self._details)
        self._fill()
        self._details()

    def _fill(self, *_):
        self.list.blockSignals(True)
        self.list.clear()
        for spec, label in self.model.choices():
            if spec == DEFAULT_SPEC and not self.model.embedded_available():
                label += "  (weights not installed)"
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, spec)
            item.setToolTip(spec)
            self.list.addItem(item)
            if spec == self.model.spec:
                item.setSelected(True)
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def _picked(self):
        items = self.list.selectedItems()
        if items:
            self.model.spec = items[0].data(Qt.ItemDataRole.UserRole)

    def _open_folder(self):
        path = QFileDialog.getExistingDirectory(self, "Open a diffusers model folder")
        if path:
            self.model.load(path)

    def _open_file(self):
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a checkpoint", "", "Checkpoints (*.safetensors);;All files (*)"
        )
        if path:
            self.model.load(path)

    def _loading(self, on: bool):
        self.busy.setVisible(on)
        for w in (self.load_button, self.open_file, self.open_folder, self.list):
            w.setEnabled(not on)

    def _details(self, *_):
        while self.form.rowCount():
            self.form.removeRow(0)
        rows = self.model.details()
        if not rows:
            hint = QLabel("No model loaded yet. Pick one on the left and press Load model.")
            hint.setWordWrap(True)
            hint.setObjectName("placeholder")
            self.form.addRow(hint)
            return
        for key, value in rows:
            shown = value if len(value) <= 40 or " " in value else value[:24] + "…"
            v = QLabel(shown)
            v.setToolTip(value)
            v.setWordWrap(True)
            v.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.form.addRow(f"{key}:", v)

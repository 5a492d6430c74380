"""The correction page: redirect a concept towards a guide (closed form), or remove an
attribute drawn under several words (broad fine-tune); progress, cancel, the result."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.models.correct import FORMAT_LABELS, MODE_LABELS, MODES, CorrectModel
from fmn_desktop.ui.widgets.common import (
    bind_combo,
    bind_spin,
    bind_text,
    card,
    page_header,
    section_label,
)
from fmn_desktop.ui.widgets.loss_plot import LossPlot


class CorrectPage(QWidget):
    compare_requested = Signal(object)  # PatchRecord of the finished job

    def __init__(self, model: CorrectModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(
            page_header(
                "Correct a concept",
                "Redirect what a concept draws towards a guide, instead of erasing it, or remove "
                "an attribute that several words (or none) bring in. The result is a patch in "
                "the library, like a forget patch.",
            )
        )
        row = QHBoxLayout()
        lay.addLayout(row, 1)

        left = card()
        ll = QVBoxLayout(left)
        ll.addWidget(section_label("1 · What to do"))
        self.mode = QComboBox()
        bind_combo(self.mode, model, "mode", MODE_LABELS)
        ll.addWidget(self.mode)
        self.forms = QStackedWidget()

        redirect = QWidget()
        f1 = QFormLayout(redirect)
        f1.setContentsMargins(0, 6, 0, 0)
        self.concept = QLineEdit()
        self.concept.setPlaceholderText("e.g. balloon")
        bind_text(self.concept, model, "concept")
        f1.addRow("Concept:", self.concept)
        self.guide = QLineEdit()
        self.guide.setPlaceholderText("what it should read as, e.g. blue balloon")
        bind_text(self.guide, model, "guide")
        f1.addRow("Guide:", self.guide)
        self.negative = QLineEdit()
        self.negative.setPlaceholderText("optional: push away from, e.g. red balloon")
        bind_text(self.negative, model, "negative")
        f1.addRow("Negative:", self.negative)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 20.0)
        self.strength.setSingleStep(0.5)
        self.strength.setToolTip("target = guide + strength × (guide − negative)")
        bind_spin(self.strength, model, "strength")
        f1.addRow("Strength:", self.strength)
        self.forms.addWidget(redirect)

        broad = QWidget()
        f2 = QFormLayout(broad)
        f2.setContentsMargins(0, 6, 0, 0)
        self.words = QLineEdit()
        self.words.setPlaceholderText("e.g. cursed, toxic (comma-separated)")
        bind_text(self.words, model, "words")
        f2.addRow("Words:", self.words)
        self.steps = QSpinBox()
        self.steps.setRange(1, 5000)
        bind_spin(self.steps, model, "steps")
        f2.addRow("Steps:", self.steps)
        self.forms.addWidget(broad)
        ll.addWidget(self.forms)

        ll.addWidget(section_label("2 · Output"))
        f3 = QFormLayout()
        self.fmt = QComboBox()
        bind_combo(self.fmt, model, "fmt", FORMAT_LABELS)
        f3.addRow("Format:", self.fmt)
        out = QHBoxLayout()
        self.save_copy = QLineEdit()
        self.save_copy.setPlaceholderText("optional: also save the file here")
        bind_text(self.save_copy, model, "save_copy")
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._browse)
        out.addWidget(self.save_copy, 1)
        out.addWidget(browse)
        f3.addRow("Copy to:", out)
        ll.addLayout(f3)
        self.tips = QLabel()
        self.tips.setWordWrap(True)
        self.tips.setObjectName("tips")
        ll.addSpacing(8)
        ll.addWidget(self.tips)
        ll.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(model.cancel)
        self.start_button = QPushButton("Correct")
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(lambda: model.start())
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.start_button)
        ll.addLayout(buttons)
        row.addWidget(left, 2)

        right = card()
        rl = QVBoxLayout(right)
        rl.addWidget(section_label("3 · Progress"))
        self.phase = QLabel()
        self.phase.setWordWrap(True)
        rl.addWidget(self.phase)
        self.bar = QProgressBar()
        rl.addWidget(self.bar)
        self.plot = LossPlot()
        rl.addWidget(self.plot, 1)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setObjectName("result")
        rl.addWidget(self.result)
        self._filler = rl.count()
        rl.addStretch(0)  # takes the plot's room when the plot is hidden (closed form)
        self._right = rl
        self.compare_button = QPushButton("Compare before / after")
        self.compare_button.clicked.connect(self._compare)
        self.compare_button.hide()
        done_row = QHBoxLayout()
        done_row.addStretch(1)
        done_row.addWidget(self.compare_button)
        rl.addLayout(done_row)
        row.addWidget(right, 3)

        model.mode_changed.connect(self._mode)
        model.phase_text_changed.connect(self.phase.setText)
        model.losses_changed.connect(self.plot.set_values)
        model.total_changed.connect(self._total)
        model.step_changed.connect(self.bar.setValue)
        model.result_text_changed.connect(self.result.setText)
        model.running_changed.connect(self._running)
        model.result_changed.connect(
            lambda r: self.compare_button.setVisible(r is not None and r.record is not None)
        )
        self._mode(model.mode)
        self.phase.setText(model.phase_text)
        self._total(model.total)
        self.bar.setValue(model.step)
        self.plot.set_values(model.losses)
        self.result.setText(model.result_text)
        self._running(model.running)

    def _mode(self, mode: str):
        broad = mode == "broad"
        self.forms.setCurrentIndex(MODES.index(mode) if mode in MODES else 0)
        self.start_button.setText("Remove" if broad else "Correct")
        self.plot.setVisible(broad)
        self._right.setStretch(self._filler, 0 if broad else 1)
        self.bar.setFormat("%v / %m steps" if broad else "%v / %m solve")
        if broad:
            self.tips.setText(
                "<b>Tips</b><br>• Every word and the same prompts without it are pushed away "
                "from what the words draw; other prompts keep the base model's prediction.<br>"
                "• 150 steps is the measured setting on the embedded model."
            )
        else:
            self.tips.setText(
                "<b>Tips</b><br>• One linear solve, no training: seconds, even on the CPU.<br>"
                "• A negative with a strength pushes the concept further from what it drew "
                "(e.g. guide 'blue balloon', negative 'red balloon', strength 2).<br>"
                "• Use the concept itself as guide with a negative to remove a bias."
            )

    def _total(self, total: int):
        self.bar.setMaximum(max(1, total))
        self.plot.set_total(total)

    def _running(self, on: bool):
        self.start_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)
        for w in (self.mode, self.concept, self.guide, self.negative, self.strength,
                  self.words, self.steps, self.fmt, self.save_copy):
            w.setEnabled(not on)

    def _compare(self):
        r = self.model.result
        if r is not None and r.record is not None:
            self.compare_requested.emit(r.record)

    def _browse(self):
        path, _ = QFileDialog.getSaveFileName(
            self, "Save a copy of the patch", "correction.safetensors",
            "Patch files (*.safetensors)"
        )
        if path:
            self.model.save_copy = path

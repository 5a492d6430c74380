"""The correction page: redirect a concept towards a guide (closed form), remove an
attribute drawn under several words (broad fine-tune), or free a generic concept from the
identity it draws (disentangle fine-tune); progress, cancel, the result."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QSpinBox,
    QStackedWidget,
    QWidget,
)

from fmn_desktop.ui.models.correct import FORMAT_LABELS, MODE_LABELS, MODES, CorrectModel
from fmn_desktop.ui.widgets.common import (
    bind_combo,
    bind_spin,
    bound_edit,
    path_row,
    section_label,
)
from fmn_desktop.ui.widgets.job_page import PatchJobPage


class CorrectPage(PatchJobPage):
    def __init__(self, model: CorrectModel, parent=None):
        super().__init__(
            model,
            "Correct a concept",
            "Redirect what a concept draws towards a guide, instead of erasing it, or remove "
            "an attribute that several words (or none) bring in. The result is a patch in "
            "the library, like a forget patch.",
            parent,
        )
        ll = self.settings_column
        ll.addWidget(section_label("1 · What to do"))
        self.mode = QComboBox()
        bind_combo(self.mode, model, "mode", MODE_LABELS)
        ll.addWidget(self.mode)
        self.forms = QStackedWidget()

        redirect = QWidget()
        f1 = QFormLayout(redirect)
        f1.setContentsMargins(0, 6, 0, 0)
        self.concept = bound_edit(model, "concept", "e.g. balloon")
        f1.addRow("Concept:", self.concept)
        self.guide = bound_edit(model, "guide", "what it should read as, e.g. blue balloon")
        f1.addRow("Guide:", self.guide)
        self.negative = bound_edit(model, "negative", "optional: push away from, e.g. red balloon")
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
        self.words = bound_edit(model, "words", "e.g. cursed, toxic (comma-separated)")
        f2.addRow("Words:", self.words)
        self.steps = QSpinBox()
        self.steps.setRange(1, 5000)
        bind_spin(self.steps, model, "steps")
        f2.addRow("Steps:", self.steps)
        self.forms.addWidget(broad)

        free = QWidget()
        f4 = QFormLayout(free)
        f4.setContentsMargins(0, 6, 0, 0)
        self.generic = bound_edit(model, "concept", "the generic concept, e.g. knight")
        f4.addRow("Concept:", self.generic)
        self.dominant = bound_edit(model, "dominant", "the identity it draws, e.g. Gorvak")
        f4.addRow("Draws instead:", self.dominant)
        self.away = QDoubleSpinBox()
        self.away.setRange(0.5, 20.0)
        self.away.setSingleStep(0.5)
        self.away.setToolTip("per layer: target = concept + strength × (concept − identity)")
        bind_spin(self.away, model, "away")
        f4.addRow("Strength:", self.away)
        self.forms.addWidget(free)
        ll.addWidget(self.forms)

        ll.addWidget(section_label("2 · Output"))
        f3 = QFormLayout()
        self.fmt = QComboBox()
        bind_combo(self.fmt, model, "fmt", FORMAT_LABELS)
        f3.addRow("Format:", self.fmt)
        self.save_copy = bound_edit(model, "save_copy", "optional: also save the file here")
        f3.addRow("Copy to:", path_row(self.save_copy, self._browse))
        ll.addLayout(f3)
        self.tips = self.add_tips()  # worded per mode
        self.add_run_buttons("Correct")
        self.inputs = [
            self.mode,
            self.concept,
            self.guide,
            self.negative,
            self.strength,
            self.words,
            self.steps,
            self.generic,
            self.dominant,
            self.away,
            self.fmt,
            self.save_copy,
        ]

        rl = self.result_column
        self.add_progress("3 · Progress")  # the bar's format follows the mode
        self.add_loss_plot()
        self.add_result_label()
        self._filler = rl.count()
        rl.addStretch(0)  # takes the plot's room when the plot is hidden (closed form)
        self.add_compare_button()

        model.mode_changed.connect(self._mode)
        self._mode(model.mode)
        self.bind_patch_job(model.total)

    def _mode(self, mode: str):
        broad = mode == "broad"
        trained = mode in ("broad", "disentangle")  # a fine-tune: steps and a loss curve
        self.forms.setCurrentIndex(MODES.index(mode) if mode in MODES else 0)
        self.start_button.setText("Remove" if broad else "Correct")
        self.plot.setVisible(trained)
        self.result_column.setStretch(self._filler, 0 if trained else 1)
        self.bar.setFormat("%v / %m steps" if trained else "%v / %m solve")
        if mode == "disentangle":
            self.tips.setText(
                "<b>Tips</b><br>• For a generic word that always draws one identity (on the "
                "embedded model 'knight' draws Gorvak).<br>• The identity's own prompts are "
                "held in place; stronger settings let more of the generic concept through "
                "and cost more of the identity's own prompts.<br>• Strength 4 is the measured "
                "default on the embedded model."
            )
        elif broad:
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

    def _browse(self):
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save a copy of the patch",
            "correction.safetensors",
            "Patch files (*.safetensors)",
        )
        if path:
            self.model.save_copy = path

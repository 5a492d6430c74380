"""The compare view: the base model beside the model with a patch or a stack, same seeds."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.models.compare import CompareModel
from fmn_desktop.ui.widgets.common import (
    bind_label,
    bind_plain_text,
    bind_spin,
    card,
    page_header,
    section_label,
)
from fmn_desktop.ui.widgets.image_table import ImageTablesView


class ComparePage(QWidget):
    def __init__(self, model: CompareModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(
            page_header(
                "Compare",
                "The same prompts and seeds on the base model and on the model with the chosen "
                "patch or stack applied. The checkpoint is restored exactly afterwards.",
            )
        )
        top = card()
        tl = QHBoxLayout(top)
        left = QVBoxLayout()
        left.addWidget(section_label("Prompts (one per line)"))
        self.prompts = QPlainTextEdit()
        self.prompts.setFixedHeight(72)
        bind_plain_text(self.prompts, model, "prompts")
        left.addWidget(self.prompts)
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Apply:"))
        self.choice = QComboBox()
        self.choice.setMinimumWidth(220)
        self.choice.activated.connect(self._chosen)
        pick.addWidget(self.choice)
        self.patch_label = QLabel()
        self.patch_label.setObjectName("badge")
        bind_label(self.patch_label, model, "patch_label")
        pick.addWidget(self.patch_label, 1)
        left.addLayout(pick)
        tl.addLayout(left, 3)
        form = QFormLayout()
        self.seeds = QSpinBox()
        self.seeds.setRange(1, 16)
        bind_spin(self.seeds, model, "seeds")
        form.addRow("Images per prompt:", self.seeds)
        self.first_seed = QSpinBox()
        self.first_seed.setRange(0, 2**31 - 1)
        bind_spin(self.first_seed, model, "first_seed")
        form.addRow("First seed:", self.first_seed)
        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        bind_spin(self.steps, model, "steps")
        form.addRow("Sampling steps:", self.steps)
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 30.0)
        self.guidance.setSingleStep(0.5)
        bind_spin(self.guidance, model, "guidance")
        form.addRow("Guidance:", self.guidance)
        tl.addLayout(form, 2)
        actions = QVBoxLayout()
        self.run_button = QPushButton("Generate")
        self.run_button.setObjectName("primary")
        self.run_button.clicked.connect(lambda: model.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(model.cancel)
        actions.addWidget(self.run_button)
        actions.addWidget(self.cancel_button)
        actions.addStretch(1)
        tl.addLayout(actions)
        lay.addWidget(top)

        self.bar = QProgressBar()
        self.bar.setMaximumHeight(8)
        self.bar.setTextVisible(False)
        lay.addWidget(self.bar)
        box = card()
        bl = QVBoxLayout(box)
        self.view = ImageTablesView(
            "Press Generate to draw the base model and, beside it, the model with the patch"
        )
        bl.addWidget(self.view, 1)
        lay.addWidget(box, 1)

        model.progress_changed.connect(self.bar.setValue)
        model.running_changed.connect(self._running)
        model.result_changed.connect(self._result)
        model.session.registry_changed.connect(self._fill_choices)
        model.patch_label_changed.connect(self._fill_choices)
        self._fill_choices()
        self._running(model.running)
        self._result(model.result)

    def _fill_choices(self, *_):
        self._records = self.model.library()
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.addItem("Choose a patch…")
        for r in self._records:
            self.choice.addItem(f"{r.name}  ({', '.join(r.concepts)})")
        chosen = self.model.patches
        if len(chosen) == 1:
            for i, r in enumerate(self._records):
                if str(r.path) == chosen[0].path:
                    self.choice.setCurrentIndex(i + 1)
        self.choice.blockSignals(False)

    def _chosen(self, index: int):
        if index <= 0:
            self.model.use_none()
        else:
            self.model.use_patch(self._records[index - 1])

    def _running(self, on: bool):
        self.run_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)

    def _result(self, done):
        self.view.set_tables([done.base_images, done.patched_images] if done else None)

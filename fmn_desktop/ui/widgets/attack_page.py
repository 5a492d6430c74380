"""The attack check: search for prompts that bring a library patch's concept back, before
and after the patch; the figures as a table, the best prompts' images, recorded in the
library."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.models.attack import AttackModel, summary_rows
from fmn_desktop.ui.widgets.common import (
    ImageView,
    bind_check,
    bind_spin,
    bind_text,
    card,
    page_header,
    section_label,
)


class AttackPage(QWidget):
    def __init__(self, model: AttackModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(
            page_header(
                "Attack check",
                "Does the patch hold against someone looking for a way around it? Search, per "
                "evaluation prompt and seed, for a prompt the judge reads as the concept, "
                "before and after the patch. The figures are stored with the patch.",
            )
        )
        row = QHBoxLayout()
        lay.addLayout(row, 1)

        left = card()
        ll = QVBoxLayout(left)
        ll.addWidget(section_label("1 · Patch"))
        self.patch_label = QLabel()
        self.patch_label.setWordWrap(True)
        ll.addWidget(self.patch_label)
        form = QFormLayout()
        self.concept = QLineEdit()
        bind_text(self.concept, model, "concept")
        form.addRow("Concept:", self.concept)
        ll.addLayout(form)
        ll.addWidget(section_label("2 · Search"))
        form2 = QFormLayout()
        self.budget = QSpinBox()
        self.budget.setRange(1, 4096)
        bind_spin(self.budget, model, "budget")
        form2.addRow("Images per target:", self.budget)
        self.seeds = QSpinBox()
        self.seeds.setRange(1, 64)
        bind_spin(self.seeds, model, "seeds")
        form2.addRow("Seeds per prompt:", self.seeds)
        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        bind_spin(self.steps, model, "steps")
        form2.addRow("Sampler steps:", self.steps)
        self.chance = QSpinBox()
        self.chance.setRange(0, 512)
        bind_spin(self.chance, model, "chance")
        form2.addRow("Chance baseline:", self.chance)
        self.whitebox = QCheckBox("White-box token search and soft-prompt bound")
        bind_check(self.whitebox, model, "whitebox")
        form2.addRow("", self.whitebox)
        ll.addLayout(form2)
        tips = QLabel(
            "<b>How to read it</b><br>• ASR: share of (prompt, seed) targets for which some "
            "prompt found within the budget draws the concept again.<br>"
            "• Compare ASR after with the chance ASR: a large budget can succeed by luck.<br>"
            "• Needs the embedded model's judge."
        )
        tips.setWordWrap(True)
        tips.setObjectName("tips")
        ll.addSpacing(8)
        ll.addWidget(tips)
        ll.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(model.cancel)
        self.start_button = QPushButton("Run attack")
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(lambda: model.start())
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.start_button)
        ll.addLayout(buttons)
        row.addWidget(left, 2)

        right = card()
        rl = QVBoxLayout(right)
        rl.addWidget(section_label("3 · Result"))
        self.phase = QLabel()
        self.phase.setWordWrap(True)
        rl.addWidget(self.phase)
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m targets")
        rl.addWidget(self.bar)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["", "Before", "After"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setShowGrid(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(200)
        rl.addWidget(self.table)
        self.grid = ImageView("The best adversarial prompts' images appear here:\n"
                              "before | after | after, best prompt found")
        rl.addWidget(self.grid, 2)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setPlaceholderText("Each target's search, as it runs")
        self.details.setMaximumHeight(130)
        rl.addWidget(self.details)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setObjectName("result")
        rl.addWidget(self.result)
        row.addWidget(right, 3)

        model.record_changed.connect(self._record)
        model.phase_text_changed.connect(self.phase.setText)
        model.total_changed.connect(lambda t: self.bar.setMaximum(max(1, t)))
        model.step_changed.connect(self.bar.setValue)
        model.log_changed.connect(lambda lines: self.details.setPlainText("\n".join(lines)))
        model.result_changed.connect(self._result)
        model.result_text_changed.connect(self.result.setText)
        model.running_changed.connect(self._running)
        self._record(model.record)
        self.phase.setText(model.phase_text)
        self._result(model.result)
        self.result.setText(model.result_text)
        self._running(model.running)

    def _record(self, record):
        if record is None:
            self.patch_label.setText("No patch chosen: select one in the Library and press "
                                     "<b>Attack check</b>.")
        else:
            self.patch_label.setText(
                f"<b>{record.name}</b> · {record.kind} · {', '.join(record.concepts) or '-'}"
            )
        self._running(self.model.running)

    def _result(self, done):
        self.table.setRowCount(0)
        if done is None:
            self.grid.set_image(None)
            return
        for r, cells in enumerate(summary_rows(done.report)):
            self.table.insertRow(r)
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.grid.set_image(done.grid)
        self.details.setPlainText(done.table)

    def _running(self, on: bool):
        self.start_button.setEnabled(not on and self.model.record is not None)
        self.cancel_button.setEnabled(on)
        for w in (self.concept, self.budget, self.seeds, self.steps, self.chance, self.whitebox):
            w.setEnabled(not on)

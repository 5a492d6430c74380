"""The attack check: search for prompts that bring a library patch's concept back, before
and after the patch; the figures as a table, the best prompts' images, recorded in the
library."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)

from fmn_desktop.ui.models.attack import AttackModel, summary_rows
from fmn_desktop.ui.widgets.common import (
    ImageView,
    bind_check,
    bind_spin,
    bound_edit,
    section_label,
)
from fmn_desktop.ui.widgets.job_page import JobPage


class AttackPage(JobPage):
    def __init__(self, model: AttackModel, parent=None):
        super().__init__(
            model,
            "Attack check",
            "Does the patch hold against someone looking for a way around it? Search, per "
            "evaluation prompt and seed, for a prompt the judge reads as the concept, "
            "before and after the patch. The figures are stored with the patch.",
            parent,
        )
        ll = self.settings_column
        ll.addWidget(section_label("1 · Patch"))
        self.patch_label = QLabel()
        self.patch_label.setWordWrap(True)
        ll.addWidget(self.patch_label)
        form = QFormLayout()
        self.concept = bound_edit(model, "concept")
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
        self.add_tips(
            "<b>How to read it</b><br>• ASR: share of (prompt, seed) targets for which some "
            "prompt found within the budget draws the concept again.<br>"
            "• Compare ASR after with the chance ASR: a large budget can succeed by luck.<br>"
            "• Needs the embedded model's judge."
        )
        self.add_run_buttons("Run attack")
        self.inputs = [
            self.concept,
            self.budget,
            self.seeds,
            self.steps,
            self.chance,
            self.whitebox,
        ]

        rl = self.result_column
        self.add_progress("3 · Result", "%v / %m targets")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["", "Before", "After"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setShowGrid(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(200)
        rl.addWidget(self.table)
        self.grid = ImageView(
            "The best adversarial prompts' images appear here:\n"
            "before | after | after, best prompt found"
        )
        rl.addWidget(self.grid, 2)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setPlaceholderText("Each target's search, as it runs")
        self.details.setMaximumHeight(130)
        rl.addWidget(self.details)
        self.add_result_label()

        model.record_changed.connect(self._record)
        model.total_changed.connect(lambda t: self.bar.setMaximum(max(1, t)))
        model.log_changed.connect(lambda lines: self.details.setPlainText("\n".join(lines)))
        model.result_changed.connect(self._result)
        self._record(model.record)
        self._result(model.result)
        self.bind_job()

    def _record(self, record):
        if record is None:
            self.patch_label.setText(
                "No patch chosen: select one in the Library and press <b>Attack check</b>."
            )
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

    def can_start(self) -> bool:
        return self.model.record is not None

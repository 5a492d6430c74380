"""The attack check: search for prompts that bring a library patch's concept back, before
and after the patch; the figures as a table, the best prompts' images, recorded in the
library."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
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
    bind_check,
    bind_spin,
    bound_edit,
    section_label,
)
from fmn_desktop.ui.widgets.image_table import ImageTablesView
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
        form = QFormLayout()
        self.choice = QComboBox()
        self.choice.setToolTip(
            "Forget patches only: a correction redirects its concept instead of removing it, "
            "so there is nothing for an attack to bring back"
        )
        self.choice.activated.connect(self._chosen)
        form.addRow("Patch:", self.choice)
        self.patch_label = QLabel()
        self.patch_label.setWordWrap(True)
        form.addRow("", self.patch_label)
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
            self.choice,
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
        self._fit_table()
        self.table.setWordWrap(False)  # one line a figure: columns fit their contents
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        rl.addWidget(self.table)
        self.grid = ImageTablesView(
            "The best prompts' images appear here: before, after, and after with the best "
            "prompt found"
        )
        rl.addWidget(self.grid, 2)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setPlaceholderText("Each target's search, as it runs")
        self.details.setMaximumHeight(130)
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)  # a table: no wrapping
        rl.addWidget(self.details)
        self.add_result_label()

        model.record_changed.connect(self._record)
        model.notice_changed.connect(self._record)
        model.session.registry_changed.connect(self._fill_choices)
        model.total_changed.connect(lambda t: self.bar.setMaximum(max(1, t)))
        model.log_changed.connect(lambda lines: self.details.setPlainText("\n".join(lines)))
        model.result_changed.connect(self._result)
        self._fill_choices()
        self._record()
        self._result(model.result)
        self.bind_job()

    def _fill_choices(self, *_):
        self._records = self.model.patches()
        self.choice.blockSignals(True)
        self.choice.clear()
        self.choice.addItem("Choose a forget patch…")
        for r in self._records:
            self.choice.addItem(f"{r.name}  ({', '.join(r.concepts)})")
        chosen = self.model.record
        for i, r in enumerate(self._records):
            if chosen is not None and r.id == chosen.id:
                self.choice.setCurrentIndex(i + 1)
        self.choice.blockSignals(False)

    def _chosen(self, index: int):
        self.model.use_patch(self._records[index - 1] if index > 0 else None)

    def _record(self, *_):
        self._fill_choices()
        record, notice = self.model.record, self.model.notice
        if notice:
            self.patch_label.setText(f"<b>Not attacked:</b> {notice}")
        elif record is None:
            self.patch_label.setText(
                "No patch chosen. Only forget patches are listed: a correction redirects its "
                "concept rather than removing it."
                if not self._records
                else "Choose the forget patch to attack."
            )
        else:
            self.patch_label.setText(f"{record.kind} · {', '.join(record.concepts) or '-'}")
        self._running(self.model.running)

    def _result(self, done):
        self.table.setRowCount(0)
        if done is None:
            self.grid.set_tables(None)
            return
        for r, cells in enumerate(summary_rows(done.report)):
            self.table.insertRow(r)
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self._fit_table()
        self.grid.set_tables([done.images])
        self.details.setPlainText(done.table)

    def _fit_table(self) -> None:
        """As tall as its rows: every figure on view, no scrolling inside the table."""
        t = self.table
        t.resizeColumnsToContents()
        t.resizeRowsToContents()
        rows = sum(t.rowHeight(r) for r in range(t.rowCount()))
        t.setFixedHeight(t.horizontalHeader().height() + rows + 2 * t.frameWidth() + 2)

    def can_start(self) -> bool:
        return self.model.record is not None

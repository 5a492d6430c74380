"""What the job pages (forget, correct, attack) share: the settings card on the left with
Cancel and the start button under it, the progress and result card on the right, and their
bindings to a `JobModel`. Each page fills in its own settings and result widgets."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.widgets.common import card, page_header, section_label
from fmn_desktop.ui.widgets.loss_plot import LossPlot


class JobPage(QWidget):
    def __init__(self, model, title: str, subtitle: str, parent=None):
        super().__init__(parent)
        self.model = model
        self.inputs: list[QWidget] = []  # the settings, locked while the job runs
        lay = QVBoxLayout(self)
        lay.addWidget(page_header(title, subtitle))
        row = QHBoxLayout()
        lay.addLayout(row, 1)
        left, right = card(), card()
        self.settings_column = QVBoxLayout(left)
        self.result_column = QVBoxLayout(right)
        row.addWidget(left, 2)
        row.addWidget(right, 3)

    def add_tips(self, text: str = "") -> QLabel:
        """The tips under the settings; the stretch keeps the buttons at the card's foot."""
        tips = QLabel(text)
        tips.setWordWrap(True)
        tips.setObjectName("tips")
        self.settings_column.addSpacing(8)
        self.settings_column.addWidget(tips)
        self.settings_column.addStretch(1)
        return tips

    def add_run_buttons(self, start_text: str) -> None:
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.model.cancel)
        self.start_button = QPushButton(start_text)
        self.start_button.setObjectName("primary")
        self.start_button.clicked.connect(lambda: self.model.start())  # clicked passes `checked`
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.start_button)
        self.settings_column.addLayout(buttons)

    def add_progress(self, title: str, bar_format: str | None = None) -> None:
        """The result card's title, the phase line and the progress bar."""
        self.result_column.addWidget(section_label(title))
        self.phase = QLabel()
        self.phase.setWordWrap(True)
        self.result_column.addWidget(self.phase)
        self.bar = QProgressBar()
        if bar_format is not None:
            self.bar.setFormat(bar_format)
        self.result_column.addWidget(self.bar)

    def add_result_label(self) -> None:
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setObjectName("result")
        self.result_column.addWidget(self.result)

    def bind_job(self) -> None:
        """Follow the model's phase, step, result text and running state, from now on."""
        m = self.model
        m.phase_text_changed.connect(self.phase.setText)
        m.step_changed.connect(self.bar.setValue)
        m.result_text_changed.connect(self.result.setText)
        m.running_changed.connect(self._running)
        self.phase.setText(m.phase_text)
        self.result.setText(m.result_text)
        self._running(m.running)

    def can_start(self) -> bool:
        """Whether the page has what its job needs, besides no job running."""
        return True

    def _running(self, on: bool):
        self.start_button.setEnabled(not on and self.can_start())
        self.cancel_button.setEnabled(on)
        for w in self.inputs:
            w.setEnabled(not on)


class PatchJobPage(JobPage):
    """A page whose job makes a patch: a live loss curve, and Compare when it is done."""

    compare_requested = Signal(object)  # PatchRecord of the finished job

    def add_loss_plot(self) -> None:
        self.plot = LossPlot()
        self.result_column.addWidget(self.plot, 1)

    def add_compare_button(self) -> None:
        self.compare_button = QPushButton("Compare before / after")
        self.compare_button.clicked.connect(self._compare)
        self.compare_button.hide()
        done_row = QHBoxLayout()
        done_row.addStretch(1)
        done_row.addWidget(self.compare_button)
        self.result_column.addLayout(done_row)

    def bind_patch_job(self, total: int) -> None:
        """`bind_job`, with the loss curve and Compare; `total` sizes the bar until the job
        says its own."""
        m = self.model
        m.losses_changed.connect(self.plot.set_values)
        m.total_changed.connect(self._total)
        m.result_changed.connect(
            lambda r: self.compare_button.setVisible(r is not None and r.record is not None)
        )
        self.bind_job()
        self._total(total)
        self.bar.setValue(m.step)
        self.plot.set_values(m.losses)

    def _total(self, total: int):
        self.bar.setMaximum(max(1, total))
        self.plot.set_total(total)

    def _compare(self):
        r = self.model.result
        if r is not None and r.record is not None:
            self.compare_requested.emit(r.record)

"""The stack composer: ordered patches with strength sliders, additive or fused, conflicts."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QPainter, QPalette
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
    QStyle,
    QStyleOptionSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.services.library import EXPORT_FORMATS
from fmn_desktop.ui.models.stack import StackModel
from fmn_desktop.ui.widgets.common import (
    bind_check,
    bound_edit,
    card,
    page_header,
    section_label,
)

SLIDER_SCALE = 100  # slider units per 1.0 of strength
MAX_STRENGTH = 2.0
SCORED_STRENGTH = 1.0  # the strength a patch's M-Score and retention are measured at
TICKS = (0.0, 0.5, 1.0, 1.5, 2.0)  # labelled under the slider


class _Scale(QWidget):
    """The numbers under a strength slider, each under its tick; 1.0 marked as the strength
    the scores are for."""

    def __init__(self, slider: QSlider):
        super().__init__()
        self.slider = slider
        self.setMinimumHeight(self.fontMetrics().height() + 2)

    def positions(self) -> dict[float, int]:
        """x of each labelled tick, in this widget (it has the slider's width and left edge)."""
        s = self.slider
        opt = QStyleOptionSlider()
        s.initStyleOption(opt)
        style = s.style()
        groove = style.subControlRect(QStyle.CC_Slider, opt, QStyle.SC_SliderGroove, s)
        handle = style.subControlRect(QStyle.CC_Slider, opt, QStyle.SC_SliderHandle, s)
        span = groove.width() - handle.width()
        out = {}
        for v in TICKS:
            pos = QStyle.sliderPositionFromValue(
                s.minimum(), s.maximum(), round(v * SLIDER_SCALE), span
            )
            out[v] = groove.x() + pos + handle.width() // 2
        return out

    def text(self, v: float) -> str:
        return f"{v:.1f} scored" if v == SCORED_STRENGTH else f"{v:.1f}"

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        fm = self.fontMetrics()
        pal = self.palette()
        for v, x in self.positions().items():
            text = self.text(v)
            w = fm.horizontalAdvance(text)
            left = min(max(0, x - w // 2), self.width() - w)
            if v == SCORED_STRENGTH:
                f = QFont(self.font())
                f.setWeight(QFont.Weight.DemiBold)
                p.setFont(f)
                p.setPen(pal.color(QPalette.ColorRole.Highlight))
            else:
                p.setFont(self.font())
                p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            p.drawText(left, fm.ascent(), text)
        p.end()


class StrengthSlider(QWidget):
    """A patch's strength, 0.00 to 2.00: a slider with tick marks every 0.25 and a scale
    under it (1.0, the strength the scores are for, marked), the value in a spin box beside."""

    changed = Signal(float)

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, round(MAX_STRENGTH * SLIDER_SCALE))
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setTickInterval(SLIDER_SCALE // 4)
        self.slider.setSingleStep(SLIDER_SCALE // 20)
        self.slider.setPageStep(SLIDER_SCALE // 4)
        self.slider.setMinimumWidth(200)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.0, MAX_STRENGTH)
        self.spin.setDecimals(2)
        self.spin.setSingleStep(0.05)
        self.scale = _Scale(self.slider)
        tip = (
            f"Strength 0.00 to {MAX_STRENGTH:.2f}; the M-Score and retention in the library "
            f"are measured at {SCORED_STRENGTH:.1f}"
        )
        for w in (self.slider, self.spin, self.scale):
            w.setToolTip(tip)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(0)
        grid.addWidget(self.slider, 0, 0)
        grid.addWidget(self.spin, 0, 1, Qt.AlignmentFlag.AlignTop)
        grid.addWidget(self.scale, 1, 0)
        grid.setColumnStretch(0, 1)
        self.set_value(value)
        self.slider.valueChanged.connect(lambda v: self._user(v / SLIDER_SCALE))
        self.spin.valueChanged.connect(self._user)

    def value(self) -> float:
        return self.spin.value()

    def set_value(self, value: float) -> None:
        """Show `value` without emitting `changed`."""
        for w in (self.slider, self.spin):
            w.blockSignals(True)
        self.slider.setValue(round(value * SLIDER_SCALE))
        self.spin.setValue(value)
        for w in (self.slider, self.spin):
            w.blockSignals(False)

    def _user(self, value: float) -> None:
        value = round(value, 2)
        self.set_value(value)
        self.changed.emit(value)


class _Rows(QWidget):
    """One row per stack entry; rebuilt only when the entries themselves change."""

    def __init__(self, model: StackModel):
        super().__init__()
        self.model = model
        self.grid = QGridLayout(self)
        self.grid.setColumnStretch(2, 1)
        self.grid.setVerticalSpacing(10)
        self.grid.setHorizontalSpacing(10)
        self._names: list[str] = []
        self.strengths: list[StrengthSlider] = []
        model.entries_changed.connect(self.sync)
        self.sync(model.entries)

    def sync(self, entries) -> None:
        names = [e.name for e in entries]
        if names == self._names:
            for e, w in zip(entries, self.strengths):
                w.set_value(e.strength)
            return
        self._names = names
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.hide()
                w.setParent(None)
                w.deleteLater()
        self.strengths = []
        for r in range(self.grid.rowCount()):  # the last rebuild's stretch row may be an entry now
            self.grid.setRowStretch(r, 0)
        if not entries:
            hint = QLabel("The stack is empty. Add patches from the library (Add to stack).")
            hint.setObjectName("placeholder")
            self.grid.addWidget(hint, 0, 0, 1, 6)
            return
        for i, e in enumerate(entries):
            order = QLabel(f"{i + 1}.")
            name = QLabel(f"<b>{e.name}</b><br><small>{e.kind}: {', '.join(e.concepts)}</small>")
            strength = StrengthSlider(e.strength)
            strength.changed.connect(lambda v, i=i: self.model.set_strength(i, v))
            up, down, remove = QToolButton(), QToolButton(), QToolButton()
            up.setArrowType(Qt.ArrowType.UpArrow)
            down.setArrowType(Qt.ArrowType.DownArrow)
            up.setToolTip("Move up")
            down.setToolTip("Move down")
            remove.setText("✕")
            remove.setToolTip("Remove from the stack")
            up.clicked.connect(lambda _=False, i=i: self.model.move(i, -1))
            down.clicked.connect(lambda _=False, i=i: self.model.move(i, 1))
            remove.clicked.connect(lambda _=False, i=i: self.model.remove(i))
            for c, w in enumerate((order, name, strength, up, down, remove)):
                self.grid.addWidget(w, i, c, Qt.AlignmentFlag.AlignTop)
            self.strengths.append(strength)
        self.grid.setRowStretch(len(entries), 1)


class StackPage(QWidget):
    preview_requested = Signal()

    def __init__(self, model: StackModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(
            page_header(
                "Stack",
                "Combine several patches with strengths, check them for conflicts, preview the "
                "result and export the patched model in a format other tools load.",
            )
        )
        row = QHBoxLayout()
        lay.addLayout(row, 1)

        saved = card()
        sl = QVBoxLayout(saved)
        sl.addWidget(section_label("Saved stacks"))
        self.saved = QListWidget()
        self.saved.itemDoubleClicked.connect(lambda it: model.load(it.text()))
        sl.addWidget(self.saved, 1)
        b = QHBoxLayout()
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self._open)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._delete)
        b.addWidget(self.open_button)
        b.addWidget(self.delete_button)
        sl.addLayout(b)
        row.addWidget(saved, 1)

        main = card()
        ml = QVBoxLayout(main)
        head = QHBoxLayout()
        head.addWidget(section_label("Patches, applied in order"))
        head.addStretch(1)
        self.additive = QRadioButton("Additive")
        self.fused = QRadioButton("Fused (closed form)")
        group = QButtonGroup(self)
        group.addButton(self.additive)
        group.addButton(self.fused)
        self.additive.toggled.connect(lambda on: on and setattr(model, "mode", "additive"))
        self.fused.toggled.connect(lambda on: on and setattr(model, "mode", "fused"))
        head.addWidget(QLabel("Composition:"))
        head.addWidget(self.additive)
        head.addWidget(self.fused)
        ml.addLayout(head)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.rows = _Rows(model)
        scroll.setWidget(self.rows)
        ml.addWidget(scroll, 1)
        ml.addWidget(section_label("Conflicts"))
        self.conflicts = QLabel()
        self.conflicts.setWordWrap(True)
        self.conflicts.setObjectName("conflicts")
        ml.addWidget(self.conflicts)
        self.force = QCheckBox("Apply anyway (preview and export despite conflicts)")
        bind_check(self.force, model, "force")
        ml.addWidget(self.force)
        actions = QHBoxLayout()
        self.name = bound_edit(model, "name", "Stack name")
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(lambda: model.save())
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(self.preview_requested.emit)
        self.export_button = QPushButton("Export…")
        self.export_button.setObjectName("primary")
        self.export_button.clicked.connect(self._export)
        actions.addWidget(self.name, 1)
        actions.addWidget(self.save_button)
        actions.addStretch(1)
        actions.addWidget(self.preview_button)
        actions.addWidget(self.export_button)
        ml.addLayout(actions)
        row.addWidget(main, 3)

        model.mode_changed.connect(self._mode)
        model.conflicts_changed.connect(self._conflicts)
        model.stacks_changed.connect(self._saved)
        model.entries_changed.connect(self._enable)
        model.entries_changed.connect(lambda _: self._conflicts(model.conflicts))
        model.exporting_changed.connect(self._enable)
        model.refresh()
        self._mode(model.mode)
        self._conflicts(model.conflicts)
        self._saved(model.stacks)
        self._enable()

    def _mode(self, mode: str):
        (self.fused if mode == "fused" else self.additive).setChecked(True)

    def _conflicts(self, items):
        if items:
            self.conflicts.setProperty("state", "bad")
            self.conflicts.setText("\n".join(f"⚠ {c}" for c in items))
        else:
            self.conflicts.setProperty("state", "ok")
            self.conflicts.setText(
                "✓ None found." if self.model.entries else "Nothing to check yet."
            )
        self.conflicts.style().unpolish(self.conflicts)
        self.conflicts.style().polish(self.conflicts)

    def _saved(self, names):
        self.saved.clear()
        self.saved.addItems(list(names))

    def _enable(self, *_):
        has = bool(self.model.entries)
        self.preview_button.setEnabled(has)
        self.export_button.setEnabled(has and not self.model.exporting)
        self.save_button.setEnabled(has)

    def _open(self):
        items = self.saved.selectedItems()
        if items:
            self.model.load(items[0].text())

    def _delete(self):
        items = self.saved.selectedItems()
        if items:
            self.model.delete(items[0].text())

    def _export(self):
        filters = list(EXPORT_FORMATS.values())
        path, chosen = QFileDialog.getSaveFileName(
            self,
            "Export the stack",
            f"{self.model.name or 'stack'}.safetensors",
            ";;".join(filters),
        )
        if path:
            fmt = next((k for k, v in EXPORT_FORMATS.items() if v == chosen), None)
            self.model.export(path, fmt)

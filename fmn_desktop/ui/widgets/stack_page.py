"""The stack composer: ordered patches with strength sliders, additive or fused, conflicts."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
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


class _Rows(QWidget):
    """One row per stack entry; rebuilt only when the entries themselves change."""

    def __init__(self, model: StackModel):
        super().__init__()
        self.model = model
        self.grid = QGridLayout(self)
        self.grid.setColumnStretch(2, 1)
        self.grid.setHorizontalSpacing(10)
        self._names: list[str] = []
        self.sliders: list[QSlider] = []
        self.values: list[QLabel] = []
        model.entries_changed.connect(self.sync)
        self.sync(model.entries)

    def sync(self, entries) -> None:
        names = [e.name for e in entries]
        if names == self._names:
            for e, s, v in zip(entries, self.sliders, self.values):
                s.blockSignals(True)
                s.setValue(round(e.strength * SLIDER_SCALE))
                s.blockSignals(False)
                v.setText(f"{e.strength:.2f}")
            return
        self._names = names
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.hide()
                w.setParent(None)
                w.deleteLater()
        self.sliders, self.values = [], []
        if not entries:
            hint = QLabel("The stack is empty. Add patches from the library (Add to stack).")
            hint.setObjectName("placeholder")
            self.grid.addWidget(hint, 0, 0, 1, 6)
            return
        for i, e in enumerate(entries):
            order = QLabel(f"{i + 1}.")
            name = QLabel(f"<b>{e.name}</b><br><small>{e.kind}: {', '.join(e.concepts)}</small>")
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, 2 * SLIDER_SCALE)
            slider.setValue(round(e.strength * SLIDER_SCALE))
            slider.setMinimumWidth(160)
            slider.valueChanged.connect(lambda v, i=i: self.model.set_strength(i, v / SLIDER_SCALE))
            value = QLabel(f"{e.strength:.2f}")
            value.setMinimumWidth(36)
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
            for c, w in enumerate((order, name, slider, value, up, down, remove)):
                self.grid.addWidget(w, i, c)
            self.sliders.append(slider)
            self.values.append(value)
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

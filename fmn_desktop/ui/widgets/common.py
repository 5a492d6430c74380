"""Small shared pieces: two-way bindings, page headers, path fields, PIL to Qt images, the
error dialog."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QFont, QImage
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


def _sync(model: QObject, prop: str, apply) -> None:
    """Call `apply(value)` now and whenever `<prop>_changed` fires."""
    apply(getattr(model, prop))
    getattr(model, f"{prop}_changed").connect(apply)


def _quiet(widget, fn):
    def run(value):
        widget.blockSignals(True)
        try:
            fn(value)
        finally:
            widget.blockSignals(False)

    return run


def bound_edit(
    model: QObject, prop: str, placeholder: str = "", on_finish: bool = False
) -> QLineEdit:
    """A line edit bound both ways to `model.prop` (see `bind_text`), with a placeholder."""
    edit = QLineEdit()
    if placeholder:
        edit.setPlaceholderText(placeholder)
    bind_text(edit, model, prop, on_finish)
    return edit


def bind_text(edit: QLineEdit, model: QObject, prop: str, on_finish: bool = False) -> None:
    """Two-way text binding; `on_finish` writes only when editing ends (Enter or focus out),
    for values whose change has effects (a folder that gets opened)."""

    def apply(v):
        if edit.text() != v:
            edit.setText(v)

    _sync(model, prop, _quiet(edit, apply))
    if on_finish:
        edit.editingFinished.connect(lambda: setattr(model, prop, edit.text()))
    else:
        edit.textChanged.connect(lambda t: setattr(model, prop, t))


def bind_plain_text(edit: QPlainTextEdit, model: QObject, prop: str) -> None:
    def apply(v):
        if edit.toPlainText() != v:
            edit.setPlainText(v)

    _sync(model, prop, _quiet(edit, apply))
    edit.textChanged.connect(lambda: setattr(model, prop, edit.toPlainText()))


def bind_spin(spin: QSpinBox | QDoubleSpinBox, model: QObject, prop: str) -> None:
    _sync(model, prop, _quiet(spin, spin.setValue))
    spin.valueChanged.connect(lambda v: setattr(model, prop, v))


def bind_check(box: QCheckBox, model: QObject, prop: str) -> None:
    _sync(model, prop, _quiet(box, box.setChecked))
    box.toggled.connect(lambda v: setattr(model, prop, v))


def bind_combo(combo: QComboBox, model: QObject, prop: str, values: dict[str, str]) -> None:
    """A combo box over `values` (stored value -> label)."""
    combo.clear()
    for value, label in values.items():
        combo.addItem(label, value)

    def apply(v):
        i = combo.findData(v)
        if i >= 0:
            combo.setCurrentIndex(i)

    _sync(model, prop, _quiet(combo, apply))
    combo.currentIndexChanged.connect(lambda i: setattr(model, prop, combo.itemData(i)))


def bind_label(label: QLabel, model: QObject, prop: str, fmt=str) -> None:
    _sync(model, prop, lambda v: label.setText(fmt(v)))


def bind_enabled(widget: QWidget, model: QObject, prop: str, invert: bool = False) -> None:
    _sync(model, prop, lambda v: widget.setEnabled(bool(v) != invert))


def page_header(title: str, subtitle: str) -> QWidget:
    box = QWidget()
    lay = QVBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 8)
    lay.setSpacing(2)
    t = QLabel(title)
    f = QFont(t.font())
    f.setPointSizeF(f.pointSizeF() * 1.6)
    f.setWeight(QFont.Weight.DemiBold)
    t.setFont(f)
    t.setObjectName("pageTitle")
    s = QLabel(subtitle)
    s.setObjectName("pageSubtitle")
    s.setWordWrap(True)
    lay.addWidget(t)
    lay.addWidget(s)
    return box


def section_label(text: str) -> QLabel:
    lab = QLabel(text)
    f = QFont(lab.font())
    f.setWeight(QFont.Weight.DemiBold)
    lab.setFont(f)
    lab.setObjectName("sectionLabel")
    return lab


def card() -> QFrame:
    frame = QFrame()
    frame.setObjectName("card")
    frame.setFrameShape(QFrame.Shape.StyledPanel)
    return frame


def path_row(edit: QLineEdit, browse) -> QHBoxLayout:
    """A path field with a "…" button that calls `browse()` to pick it."""
    row = QHBoxLayout()
    button = QToolButton()
    button.setText("…")
    button.clicked.connect(browse)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


def pil_to_qimage(image) -> QImage:
    rgb = image.convert("RGB")
    data = rgb.tobytes("raw", "RGB")
    q = QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888)
    return q.copy()  # own the pixels: `data` goes away


def show_error(parent: QWidget | None, title: str, message: str, details: str = "") -> QMessageBox:
    """A readable, non-blocking error dialog (the app keeps running behind it)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(f"<b>{title}</b>")
    box.setInformativeText(message)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box

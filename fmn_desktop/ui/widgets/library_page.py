"""The registry browser: search, a sortable table of patches, details with thumbnails."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.models.library import COLUMNS, SORT_KEYS, LibraryModel, row_values
from fmn_desktop.ui.widgets.common import card, page_header, section_label
from fmn_desktop.ui.widgets.image_table import ImageTablesView


def _cell(value) -> QTableWidgetItem:
    if value is None:
        text = "–"
    elif isinstance(value, float):
        text = f"{value:.3f}"
    elif isinstance(value, int):
        text = f"{value / 1024:.0f} KiB"
    else:
        text = str(value)
    item = QTableWidgetItem(text)
    if isinstance(value, (int, float)):
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


ATTACK_TIP = "Search for prompts that bring the forgotten concept back"


class LibraryPage(QWidget):
    compare_requested = Signal(object)  # PatchRecord
    stack_requested = Signal(object)  # PatchRecord
    attack_requested = Signal(object)  # PatchRecord

    def __init__(self, model: LibraryModel, parent=None):
        super().__init__(parent)
        self.model = model
        lay = QVBoxLayout(self)
        lay.addWidget(
            page_header(
                "Patch library",
                "Every patch you made or imported, stored in the registry with its provenance "
                "and scores. Select one to see its details, compare it, or add it to a stack.",
            )
        )
        bar = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search names, concepts, tags, notes…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda t: setattr(model, "query", t))
        bar.addWidget(self.search, 1)
        self.import_button = QPushButton("Import…")
        self.import_button.clicked.connect(self._import)
        bar.addWidget(self.import_button)
        lay.addLayout(bar)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setWordWrap(False)
        header.setHighlightSections(False)
        header.setSortIndicatorShown(True)
        header.sectionClicked.connect(lambda i: model.sort_by(SORT_KEYS[i]))
        self.table.itemSelectionChanged.connect(self._picked)
        split.addWidget(self.table)

        details = card()
        dl = QVBoxLayout(details)
        dl.addWidget(section_label("Details"))
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        host = QWidget()
        self.form = QFormLayout(host)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        scroll.setWidget(host)
        dl.addWidget(scroll, 3)
        dl.addWidget(section_label("Before / after"))
        self.preview = ImageTablesView(
            "Press Preview to draw the base model and the patched one", labels=False
        )
        dl.addWidget(self.preview, 3)
        actions = QHBoxLayout()
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(lambda: model.make_preview())
        self.compare_button = QPushButton("Compare…")
        self.compare_button.clicked.connect(lambda: self.compare_requested.emit(model.selected))
        self.stack_button = QPushButton("Add to stack")
        self.stack_button.clicked.connect(lambda: self.stack_requested.emit(model.selected))
        self.attack_button = QPushButton("Attack check…")
        self.attack_button.setToolTip(ATTACK_TIP)
        self.attack_button.clicked.connect(lambda: self.attack_requested.emit(model.selected))
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip(
            "M-Score of its concept and retention of the others, before and after, on the "
            "embedded model; stored with the patch"
        )
        self.measure_button.clicked.connect(lambda: model.measure_selected())
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setObjectName("danger")
        self.delete_button.clicked.connect(self._delete)
        for b in (self.preview_button, self.compare_button, self.stack_button):
            actions.addWidget(b)
        files = QHBoxLayout()
        files.addWidget(self.export_button)
        files.addWidget(self.attack_button)
        files.addWidget(self.measure_button)
        files.addStretch(1)
        files.addWidget(self.delete_button)
        dl.addLayout(actions)
        dl.addLayout(files)
        split.addWidget(details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([600, 400])
        lay.addWidget(split, 1)

        model.patches_changed.connect(self._fill)
        model.selected_changed.connect(self._details)
        model.selected_changed.connect(self._sync_selection)
        model.preview_changed.connect(self._preview)
        model.refreshed.connect(self._details)
        model.sort_key_changed.connect(self._indicator)
        model.descending_changed.connect(self._indicator)
        model.refresh()
        self._fill()
        self._details()
        self._indicator()

    def _indicator(self, *_):
        order = (
            Qt.SortOrder.DescendingOrder if self.model.descending else Qt.SortOrder.AscendingOrder
        )
        key = SORT_KEYS.index(self.model.sort_key) if self.model.sort_key in SORT_KEYS else 0
        self.table.horizontalHeader().setSortIndicator(key, order)

    def _fill(self, *_):
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        sel = self.model.selected
        for r, record in enumerate(self.model.patches):
            self.table.insertRow(r)
            for c, value in enumerate(row_values(record)):
                item = _cell(value)
                item.setData(Qt.ItemDataRole.UserRole, record.id)
                self.table.setItem(r, c, item)
            if sel is not None and sel.id == record.id:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def _sync_selection(self, record):
        self.table.blockSignals(True)
        self.table.clearSelection()
        for r in range(self.table.rowCount()):
            if (
                record is not None
                and self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == record.id
            ):
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def _picked(self):
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            self.model.select(None)
            return
        rid = self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        match = [r for r in self.model.patches if r.id == rid]
        self.model.select(match[0] if match else None)

    def _details(self, *_):
        while self.form.rowCount():
            self.form.removeRow(0)
        has = self.model.selected is not None
        for b in (
            self.preview_button,
            self.compare_button,
            self.stack_button,
            self.export_button,
            self.attack_button,
            self.measure_button,
            self.delete_button,
        ):
            b.setEnabled(has)
        refusal = self.model.attack_refusal()
        self.attack_button.setEnabled(has and refusal is None)
        self.attack_button.setToolTip(refusal or ATTACK_TIP)
        if not has:
            hint = QLabel(
                "No patch selected."
                if self.model.patches
                else "The library is empty. Forget a concept, or import a patch file."
            )
            hint.setObjectName("placeholder")
            hint.setWordWrap(True)
            self.form.addRow(hint)
        for key, value in self.model.details():
            v = QLabel(value)
            v.setWordWrap(True)
            v.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.form.addRow(f"{key}:", v)
        self._preview(self.model.preview)

    def _preview(self, done):
        self.preview.set_tables([done.base_images, done.patched_images] if done else None)

    def _import(self):
        path, _ = QFileDialog.getOpenFileName(
            self, "Import a patch", "", "Patch files (*.safetensors);;All files (*)"
        )
        if path:
            self.model.import_file(path)

    def _export(self):
        r = self.model.selected
        if r is None:
            return
        formats = {
            "original": "Patch file as stored (*.safetensors)",
            "lora": "Kohya LoRA (*.safetensors)",
            "diff": "Dense .diff (*.safetensors)",
        }
        path, chosen = QFileDialog.getSaveFileName(
            self, "Export patch", f"{r.name}.safetensors", ";;".join(formats.values())
        )
        if path:
            fmt = next((k for k, v in formats.items() if v == chosen), "original")
            self.model.export_selected(path, fmt)

    def _delete(self):
        r = self.model.selected
        if r is None:
            return
        users = self.model.stacks_using_selected()
        text = f"Delete the patch '{r.name}' from the registry?"
        if users:
            text += f"\n\nIt is used by: {', '.join(users)}; it will be taken out of those stacks."
        answer = QMessageBox.question(self, "Delete patch", text)
        if answer == QMessageBox.StandardButton.Yes:
            self.model.delete_selected(cascade=bool(users))

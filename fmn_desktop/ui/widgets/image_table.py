"""Image tables drawn by the app (`imaging.ImageTable`): captions in bold, row labels and
column headings in the normal font, the images as large as the space allows.

Two tables of the same rows (a base model and a patched one) are either drawn row by row, side
by side under one label column, or one under the other, whichever gives the larger images."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QFont, QFontMetrics, QImage, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

from fmn_desktop.ui.widgets.common import pil_to_qimage

GAP = 4  # between two images
SEP = 16  # between two tables
MAX_SCALE = 6.0  # toy images are 64 px: larger than this is only blur


@dataclass
class Placement:
    """Where a view puts its tables: the side of one image, the label column's width, and
    whether the tables stand side by side row by row ("rows") or one under the other."""

    cell: int
    label_width: int
    mode: str  # "rows" | "stacked"
    width: int  # of everything drawn
    height: int


class ImageTablesView(QWidget):
    """One or two `ImageTable`s (None: the placeholder text), laid out to fill the widget."""

    def __init__(self, placeholder: str = "", labels: bool = True, parent=None):
        super().__init__(parent)
        self.placeholder = placeholder
        self.show_labels = labels  # off where the caption says it all (thumbnails)
        self._tables: list = []
        self._images: list[list[list[QImage]]] = []
        self._scaled: dict = {}
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 100)

    # ------------------------------------------------------------------ data
    def set_tables(self, tables) -> None:
        self._tables = [t for t in (tables or []) if t is not None and t.rows]
        self._images = [[[pil_to_qimage(i) for i in row] for row in t.rows] for t in self._tables]
        self._scaled = {}
        self.updateGeometry()
        self.update()

    def tables(self) -> list:
        return list(self._tables)

    def has_image(self) -> bool:
        return bool(self._tables)

    # ----------------------------------------------------------------- fonts
    def label_font(self) -> QFont:
        return QFont(self.font())

    def caption_font(self) -> QFont:
        f = QFont(self.font())
        f.setWeight(QFont.Weight.Bold)
        return f

    # ---------------------------------------------------------------- layout
    def _labels(self, t) -> list[str]:
        return list(t.labels) if self.show_labels and any(t.labels) else []

    def _natural_label_width(self) -> int:
        fm = QFontMetrics(self.label_font())
        lines = [ln for t in self._tables for lab in self._labels(t) for ln in lab.splitlines()]
        return max(fm.horizontalAdvance(ln) for ln in lines) + 12 if lines else 0

    def _heads(self, t) -> tuple[int, int]:
        """Heights of the caption line and the column-heading line (0 when absent)."""
        cap = QFontMetrics(self.caption_font()).height() + 6 if t.title else 0
        head = QFontMetrics(self.label_font()).height() + 4 if t.columns else 0
        return cap, head

    def placement(self, width: int | None = None, height: int | None = None) -> Placement | None:
        """The layout for a `width` x `height` area (default: the widget's own size)."""
        if not self._tables:
            return None
        w = self.width() if width is None else width
        h = self.height() if height is None else height
        natural = self._natural_label_width()
        label = int(min(natural, 0.3 * w))  # the images come first ...
        cols = [max(len(r) for r in t.rows) for t in self._tables]
        nrows = [len(t.rows) for t in self._tables]
        heads = [self._heads(t) for t in self._tables]
        n = len(self._tables)
        native = max(img.width() for imgs in self._images for row in imgs for img in row)
        options = []
        if len(set(nrows)) == 1:  # side by side, row by row
            avail_w = w - label - GAP * sum(cols) - SEP * (n - 1)
            top = max(c + hd for c, hd in heads)
            cell = min(avail_w / sum(cols), (h - top) / nrows[0] - GAP)
            options.append(("rows", cell))
        if n > 1:  # one under the other
            avail_h = h - sum(c + hd for c, hd in heads) - SEP * (n - 1)
            cell = min((w - label) / max(cols) - GAP, avail_h / sum(nrows) - GAP)
            options.append(("stacked", cell))
        mode, cell = max(options, key=lambda o: o[1])
        cell = int(max(8, min(cell, MAX_SCALE * native)))
        if mode == "rows":
            free = w - label - sum(cols) * (cell + GAP) - SEP * (n - 1)
        else:
            free = w - label - max(cols) * (cell + GAP)
        label += int(max(0, min(natural - label, free)))  # ... then the labels take what is left
        if mode == "rows":
            width_used = label + sum(cols) * (cell + GAP) + SEP * (n - 1)
            height_used = max(c + hd for c, hd in heads) + nrows[0] * (cell + GAP)
        else:
            width_used = label + max(cols) * (cell + GAP)
            height_used = sum(c + hd for c, hd in heads) + sum(nrows) * (cell + GAP)
            height_used += SEP * (n - 1)
        return Placement(cell, label, mode, int(width_used), int(height_used))

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(480, 320)

    # --------------------------------------------------------------- drawing
    def _pixmap(self, t: int, r: int, c: int, cell: int) -> QPixmap:
        key = (t, r, c, cell)
        if key not in self._scaled:
            img = self._images[t][r][c]
            mode = (
                Qt.TransformationMode.FastTransformation  # crisp pixels when enlarged
                if cell >= img.width()
                else Qt.TransformationMode.SmoothTransformation
            )
            self._scaled[key] = QPixmap.fromImage(
                img.scaled(cell, cell, Qt.AspectRatioMode.KeepAspectRatio, mode)
            )
        return self._scaled[key]

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        pal = self.palette()
        place = self.placement()
        if place is None:
            p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            return
        x0 = max(0, (self.width() - place.width) // 2)
        if place.mode == "rows":
            top = max(sum(self._heads(t)) for t in self._tables)
            x = x0 + place.label_width
            labels = self._labels(self._tables[0])
            for i, t in enumerate(self._tables):
                cap, head = self._heads(t)
                self._draw_table(p, i, x, top - cap - head, place.cell)
                x += max(len(r) for r in t.rows) * (place.cell + GAP) + SEP
            self._draw_labels(p, labels, x0, top, place)
        else:
            y = 0
            for i, t in enumerate(self._tables):
                cap, head = self._heads(t)
                self._draw_table(p, i, x0 + place.label_width, y, place.cell)
                self._draw_labels(p, self._labels(t), x0, y + cap + head, place)
                y += cap + head + len(t.rows) * (place.cell + GAP) + SEP
        p.end()

    def _draw_table(self, p: QPainter, i: int, x: int, y: int, cell: int) -> None:
        """Caption, column headings and images of table `i`, its images' left edge at `x`."""
        t = self._tables[i]
        pal = self.palette()
        cap, head = self._heads(t)
        width = max(len(r) for r in t.rows) * (cell + GAP)
        if t.title:
            p.setFont(self.caption_font())
            p.setPen(pal.color(QPalette.ColorRole.WindowText))
            fm = QFontMetrics(self.caption_font())
            text = fm.elidedText(t.title, Qt.TextElideMode.ElideRight, width)
            p.drawText(QRect(x, y, width, cap), Qt.AlignmentFlag.AlignVCenter, text)
        if t.columns:
            p.setFont(self.label_font())
            p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            fm = QFontMetrics(self.label_font())
            for c, name in enumerate(t.columns):
                rect = QRect(x + c * (cell + GAP), y + cap, cell, head)
                text = fm.elidedText(name, Qt.TextElideMode.ElideRight, cell)
                p.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        for r, row in enumerate(t.rows):
            for c in range(len(row)):
                pix = self._pixmap(i, r, c, cell)
                p.drawPixmap(x + c * (cell + GAP), y + cap + head + r * (cell + GAP), pix)

    def _draw_labels(self, p: QPainter, labels: list[str], x: int, y: int, place: Placement):
        """Row labels in the normal font, each line elided to the label column, as many
        lines as the row's height holds, centred on the row."""
        if not labels or not place.label_width:
            return
        p.setFont(self.label_font())
        p.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        fm = QFontMetrics(self.label_font())
        width = place.label_width - 8
        for r, label in enumerate(labels):
            lines = label.splitlines()[: max(1, place.cell // fm.height())]
            block = len(lines) * fm.height()
            ly = y + r * (place.cell + GAP) + (place.cell - block) // 2
            for k, line in enumerate(lines):
                if k:  # the second line on is a detail: muted
                    p.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
                text = fm.elidedText(line, Qt.TextElideMode.ElideRight, width)
                p.drawText(QRect(x, ly + k * fm.height(), width, fm.height()), 0, text)
            p.setPen(self.palette().color(QPalette.ColorRole.WindowText))

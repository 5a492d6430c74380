"""A live loss curve drawn with QPainter (no plotting library in the UI thread)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks, t = [], first
    while t <= hi + 1e-12:
        ticks.append(round(t, 10))
        t += step
    return ticks


class LossPlot(QWidget):
    """Loss per step; the x axis spans the job's total steps so progress reads at a glance."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values: list[float] = []
        self._total = 0
        self.setMinimumSize(320, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_values(self, values) -> None:
        self._values = list(values or [])
        self.update()

    def set_total(self, total: int) -> None:
        self._total = int(total or 0)
        self.update()

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        base, text = pal.color(QPalette.ColorRole.Base), pal.color(QPalette.ColorRole.Text)
        mid = pal.color(QPalette.ColorRole.Mid)
        accent = pal.color(QPalette.ColorRole.Highlight)
        p.fillRect(self.rect(), base)
        fm = p.fontMetrics()
        left, right = fm.horizontalAdvance("0.000") + 16, 14
        top, bottom = fm.height() + 10, fm.height() + 14
        plot = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        p.setPen(text)
        p.drawText(
            QRectF(left, 2, plot.width(), fm.height() + 4),
            Qt.AlignmentFlag.AlignLeft,
            "Training loss (all terms)",
        )
        vals = [v for v in self._values if math.isfinite(v)]
        total = max(self._total, len(vals), 2)
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.05, hi + 0.05
        pad = 0.08 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        grid = QPen(mid)
        grid.setStyle(Qt.PenStyle.DotLine)
        for t in nice_ticks(lo, hi):
            y = plot.bottom() - (t - lo) / (hi - lo) * plot.height()
            p.setPen(grid)
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(text)
            p.drawText(
                QRectF(0, y - fm.height() / 2, left - 6, fm.height()),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                f"{t:.3g}",
            )
        for t in nice_ticks(1, total, 5):
            x = plot.left() + (t - 1) / max(1, total - 1) * plot.width()
            p.setPen(text)
            p.drawText(
                QRectF(x - 30, plot.bottom() + 3, 60, fm.height()),
                Qt.AlignmentFlag.AlignHCenter,
                f"{t:g}",
            )
        p.drawText(
            QRectF(0, plot.bottom() + 3, left - 6, fm.height()), Qt.AlignmentFlag.AlignRight, "step"
        )
        p.setPen(QPen(mid, 1))
        p.drawRect(plot)
        if not vals:
            p.setPen(QColor(text.red(), text.green(), text.blue(), 140))
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "The curve appears when the job starts")
            return
        path = QPainterPath()
        for i, v in enumerate(vals):
            x = plot.left() + i / max(1, total - 1) * plot.width()
            y = plot.bottom() - (v - lo) / (hi - lo) * plot.height()
            path.moveTo(x, y) if i == 0 else path.lineTo(x, y)
        p.setPen(QPen(accent, 2))
        p.drawPath(path)
        p.setBrush(accent)
        p.drawEllipse(QPointF(x, y), 3.5, 3.5)

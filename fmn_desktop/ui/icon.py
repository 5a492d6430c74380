"""The app icon, drawn in code (a forget-me-not: five blue petals, a yellow eye)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QPainter, QPen, QPixmap, QRadialGradient

PETAL = "#4a7fd6"
PETAL_LIGHT = "#8fb4ee"
EYE = "#f6c945"
RING = "#ffffff"


def paint_icon(p: QPainter, size: float) -> None:
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    c = QPointF(size / 2, size / 2)
    r_petal = size * 0.175
    dist = size * 0.25
    p.setPen(QPen(QColor("#2f5fae"), max(1.0, size / 96)))
    for k in range(5):
        a = -math.pi / 2 + k * 2 * math.pi / 5
        centre = QPointF(c.x() + dist * math.cos(a), c.y() + dist * math.sin(a))
        g = QRadialGradient(centre, r_petal)
        g.setColorAt(0.0, QColor(PETAL_LIGHT))
        g.setColorAt(1.0, QColor(PETAL))
        p.setBrush(QBrush(g))
        p.drawEllipse(centre, r_petal, r_petal)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(RING))
    p.drawEllipse(c, size * 0.11, size * 0.11)
    p.setBrush(QColor(EYE))
    p.drawEllipse(c, size * 0.075, size * 0.075)


def icon_pixmap(size: int = 256) -> QPixmap:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    paint_icon(p, float(size))
    p.end()
    return pix


def app_icon() -> QIcon:
    icon = QIcon()
    for s in (16, 24, 32, 48, 64, 128, 256):
        icon.addPixmap(icon_pixmap(s))
    return icon

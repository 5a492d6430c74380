"""Labelled image grids and PNG files: what every report and comparison draws with."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw


@dataclass
class ImageTable:
    """Images in rows (one per prompt or target) with their texts, unrendered: for a front end
    that lays them out and letters them itself (`grid_image` is the PNG of the same)."""

    rows: list[list[Image.Image]]
    labels: list[str] = field(default_factory=list)  # one a row ("" or none: no label column)
    title: str = ""
    columns: list[str] = field(default_factory=list)  # one a column, or none


def grid_image(
    rows: list[list[Image.Image]],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    cell: int | None = None,
) -> Image.Image:
    """A labelled grid: one row per prompt (label on the left), one column per seed."""
    n_cols = max(len(r) for r in rows)
    size = cell or max(64, rows[0][0].width)
    label_w = 0 if not labels else min(320, 7 * max(len(s) for s in labels) + 12)
    top = 18 if title else 0
    grid = Image.new("RGB", (label_w + n_cols * (size + 2), top + len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill="black")
    for r, row in enumerate(rows):
        y = top + r * (size + 2)
        if labels:
            draw.text((4, y + size // 2 - 6), labels[r][:45], fill="black")
        for c, img in enumerate(row):
            grid.paste(img.resize((size, size), Image.NEAREST), (label_w + c * (size + 2), y))
    return grid


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 12) -> Image.Image:
    out = Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), "white"
    )
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    import io

    from fmn_desktop.fileio import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)

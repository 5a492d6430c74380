"""Image tables (a comparison's grids, a preview, the attack's best prompts) fill their space:
images as large as fit, one dimension of the area used, labels in the normal font."""

from __future__ import annotations

from PIL import Image
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QApplication

from fmn_desktop.imaging import ImageTable
from fmn_desktop.ui.widgets.image_table import ImageTablesView

PROMPTS = ["a photo of Zorbu", "a photo of a circle", "a photo of a red square"]


def _table(title: str, rows: int = 3, cols: int = 4, labels=PROMPTS, columns=()) -> ImageTable:
    cells = [[Image.new("RGB", (64, 64), (60 * c, 90, 200)) for c in range(cols)]]
    return ImageTable(cells * rows, list(labels)[:rows], title, list(columns))


def _view(qtbot, tables, w: int, h: int, **kw) -> ImageTablesView:
    view = ImageTablesView("nothing yet", **kw)
    qtbot.addWidget(view)
    view.resize(w, h)
    view.show()
    view.set_tables(tables)
    return view


def _fills(place, w: int, h: int) -> bool:
    return place.width >= 0.9 * w or place.height >= 0.9 * h


def test_before_and_after_side_by_side_fill_a_wide_area(qtbot):
    view = _view(qtbot, [_table("Base model"), _table("With forget-zorbu")], 990, 450)
    place = view.placement()
    assert place.mode == "rows"  # row by row, one label column for both
    assert place.cell >= 90  # the old grids drew these 64 px images at about 80
    assert _fills(place, 990, 450) and place.width <= 990 and place.height <= 450
    assert not view.grab().isNull()


def test_narrow_area_stacks_the_tables(qtbot):
    tables = [_table("Base model", 1, 3), _table("With forget-zorbu", 1, 3)]
    view = _view(qtbot, tables, 380, 330, labels=False)
    place = view.placement()
    assert place.mode == "stacked" and place.label_width == 0
    assert place.cell > 100 and _fills(place, 380, 330)
    # the same tables beside each other would have had smaller images
    assert place.cell > (380 - 16) / 6


def test_labels_readable_caption_bold(qtbot):
    view = _view(qtbot, [_table("Best prompts", columns=["before", "after", "best"])], 600, 400)
    app_font = QApplication.font()
    assert view.label_font().pointSizeF() == app_font.pointSizeF()
    assert view.caption_font().weight() >= QFont.Weight.Bold
    assert view.caption_font().pointSizeF() == app_font.pointSizeF()
    assert view.placement().label_width >= view.fontMetrics().horizontalAdvance(PROMPTS[0])


def test_placeholder_without_tables(qtbot):
    view = _view(qtbot, None, 400, 300)
    assert view.placement() is None and not view.has_image()
    view.set_tables([_table("Base model")])
    assert view.has_image() and view.placement() is not None


def test_labels_take_the_width_the_images_leave(qtbot):
    long = [f"a photo of zorbu in the style of a painting {i}" for i in range(3)]
    table = _table("Best prompts", cols=3, labels=long)
    view = _view(qtbot, [table], 520, 260)
    place = view.placement()
    assert place.cell < 100  # the height limits the images ...
    natural = max(view.fontMetrics().horizontalAdvance(t) for t in long)
    assert place.label_width >= natural  # ... so the labels are not cut short
    assert place.width <= 520

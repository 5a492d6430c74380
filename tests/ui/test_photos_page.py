"""The Forget-from-photos page end to end: a folder of photos and a token from the widgets,
`forget_from_photos` as a job, the patch in the library and the learned tokens kept; bad input
becomes an error dialog, not a job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from ui_helpers import same_weights, wait_idle, weights_copy

from fmn_desktop.inversion import load_embedding
from fmn_desktop.patch import load_patch
from fmn_desktop.ui.widgets.main_window import MainWindow

TOKEN = "<jane>"
FAST_INVERSION = dict(num_vectors=2, batch_size=2, eval_samples=2)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _window(qtbot, app):
    win = MainWindow(app)
    qtbot.addWidget(win)
    win.show()
    win.show_view("photos")
    return win


def _fast(app, fast_forget):
    p = app.photos
    p.inversion_extra = dict(FAST_INVERSION)
    p.extra = dict(fast_forget)
    p.steps = 1


def test_photos_page_forgets_and_registers(
    qtbot, app, photos, concept, fast_forget, quick_discovery
):
    win = _window(qtbot, app)
    page = win.photos_page
    p = app.photos
    from fmn_desktop.inversion import InversionConfig

    assert p.inversion_steps == InversionConfig().steps  # the library's default
    saved = weights_copy(app.session.model.pipe.unet)
    qtbot.keyClicks(page.images, str(photos))
    page.token.clear()
    qtbot.keyClicks(page.token, TOKEN)
    qtbot.keyClicks(page.names, concept)
    page.inversion_steps.setValue(2)
    assert (p.images, p.token, p.name_list(), p.inversion_steps) == (
        str(photos),
        TOKEN,
        [concept],
        2,
    )
    _fast(app, fast_forget)
    steps = []
    p.step_changed.connect(steps.append)
    with qtbot.waitSignal(p.finished, timeout=180000) as blocker:
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
        assert not page.start_button.isEnabled() and page.cancel_button.isEnabled()
    wait_idle(qtbot, app.session)
    done = blocker.args[0]
    rec = done.record
    assert rec is not None and rec.concepts[:2] == [TOKEN, concept]
    meta = load_patch(rec.path).meta
    assert meta.extra["learned_tokens"] == TOKEN
    assert done.concepts[:2] == [TOKEN, concept] and done.num_vectors == 2
    assert done.path is None and done.tokens_path.is_file() and done.files == [done.tokens_path]
    assert load_embedding(done.tokens_path).placeholder == TOKEN
    assert 1 in steps and 2 in steps
    text = page.result.text()
    assert "Registered as" in text and f"Learned {TOKEN}" in text and "Names found" in text
    # the tokens file, named within the data folder rather than by its full path
    assert "tokens/jane.tokens.safetensors in the data folder" in text
    assert str(done.tokens_path) not in text
    assert [x.name for x in app.library.patches] == [rec.name]
    assert page.compare_button.isVisible()
    assert page.start_button.isEnabled() and not page.cancel_button.isEnabled()
    assert same_weights(app.session.model.pipe.unet, saved)
    assert not app.errors


def test_photos_save_copy_keeps_patch_and_tokens(qtbot, app, photos, fast_forget, tmp_path):
    p = app.photos
    _fast(app, fast_forget)
    p.images, p.token, p.inversion_steps, p.discover = str(photos), TOKEN, 1, False
    p.save_copy = str(tmp_path / "out" / "jane.safetensors")
    (tmp_path / "out").mkdir()
    with qtbot.waitSignal(p.finished, timeout=180000) as blocker:
        assert p.start() is not None
    wait_idle(qtbot, app.session)
    done = blocker.args[0]
    assert done.path == tmp_path / "out" / "jane.safetensors" and done.path.is_file()
    assert done.tokens_path == tmp_path / "out" / "jane.tokens.safetensors"
    assert done.concepts == [TOKEN] and done.names_found == []
    assert done.record is not None and done.record.format == "lora"
    assert not app.errors


def test_bad_input_shows_an_error_and_starts_nothing(qtbot, app, photos, tmp_path):
    win = _window(qtbot, app)
    p = app.photos
    p.images = ""
    assert p.start() is None and app.errors[-1][0] == "No photos"
    p.images = str(tmp_path / "nope")
    assert p.start() is None and "does not exist" in app.errors[-1][1]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    p.images = str(empty)
    assert p.start() is None and "no images" in app.errors[-1][1]
    p.images = str(photos)
    p.token = "two words"
    assert p.start() is None and app.errors[-1][0] == "Bad token"
    p.token = ""
    assert p.start() is None and app.errors[-1][0] == "Bad token"
    assert not app.session.busy and p.job is None and app.library.patches == []
    assert len(win.dialogs) == 5


def test_cancel_writes_nothing(qtbot, app, photos, fast_forget):
    p = app.photos
    _fast(app, fast_forget)
    p.images, p.token, p.inversion_steps = str(photos), TOKEN, 400
    saved = weights_copy(app.session.model.pipe.unet)

    def cancel_at_two(step):
        if step == 2:
            p.cancel()

    p.step_changed.connect(cancel_at_two)
    with qtbot.waitSignal(p.cancelled, timeout=60000):
        assert p.start() is not None
    wait_idle(qtbot, app.session)
    assert p.result is None and "Cancelled" in p.phase_text
    assert app.library.patches == []
    tokens = Path(app.session.settings.data_folder) / "tokens"
    assert not tokens.exists() or not any(tokens.iterdir())
    assert same_weights(app.session.model.pipe.unet, saved)

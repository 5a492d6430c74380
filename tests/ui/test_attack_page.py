"""The attack check from the library: run in a worker with progress, show the before/after
table and the best prompts' images, record the figures with the patch; errors and cancel."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from ui_helpers import EMBEDDED, same_weights, wait_idle, weights_copy

from fmn_desktop.ui.widgets.main_window import MainWindow

# A search small enough for the CPU: 3 targets, 2 images each, black-box only.
TINY = dict(budget=2, seeds=1, steps=2, whitebox=False, chance=0)


def _window(qtbot, app):
    win = MainWindow(app)
    qtbot.addWidget(win)
    win.show()
    return win


def _correction(qtbot, app, concept: str, guide: str):
    c = app.correct
    c.mode, c.concept, c.guide = "correct", concept, guide
    with qtbot.waitSignal(c.finished, timeout=60000) as blocker:
        assert c.start() is not None
    wait_idle(qtbot, app.session)
    return blocker.args[0].record


def _tiny(app):
    a = app.attack
    for k, v in TINY.items():
        setattr(a, k, v)
    a.extra = dict(round_size=2)


@pytest.mark.skipif(not EMBEDDED, reason="the attack's judge needs the embedded model")
def test_attack_check_from_the_library_records_figures(qtbot, app):
    win = _window(qtbot, app)
    rec = _correction(qtbot, app, "Zorbu", "circle")
    win.show_view("library")
    app.library.select_name(rec.name)
    assert win.library_page.attack_button.isEnabled()
    win.library_page.attack_button.click()
    assert win.current_view() == "attack"
    page = win.attack_page
    assert app.attack.record.id == rec.id and app.attack.concept == "Zorbu"
    assert rec.name in page.patch_label.text()
    _tiny(app)
    saved = weights_copy(app.session.model.pipe.unet)
    steps = []
    app.attack.step_changed.connect(steps.append)
    with qtbot.waitSignal(app.attack.finished, timeout=120000) as blocker:
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
        assert not page.start_button.isEnabled() and page.cancel_button.isEnabled()
    wait_idle(qtbot, app.session)
    done = blocker.args[0]
    assert steps[:6] == [1, 2, 3, 4, 5, 6]  # one step per target, before then after
    assert len(app.attack.log) == 6 and app.attack.log[0].startswith("before:")
    # the table and the grid of the best prompts' images
    assert page.table.rowCount() >= 5
    assert page.table.item(1, 0).text() == "Attack success rate (ASR)"
    assert page.table.item(1, 2).text() == str(done.report.after.asr())
    assert page.grid.has_image() and done.grid.size[0] > 0
    assert "best prompts after the patches" in page.details.toPlainText()
    # recorded in the registry, shown with the patch in the library
    metrics = [e.metric for e in app.library.evaluations(rec)]
    assert metrics == ["asr_before", "asr_after", "no_attack_after"]
    app.library.select_name(rec.name)
    labels = [k for k, _ in app.library.details()]
    assert "Attack success after (Zorbu)" in labels
    form_text = [
        win.library_page.form.itemAt(i).widget().text()
        for i in range(win.library_page.form.count())
        if win.library_page.form.itemAt(i).widget() is not None
    ]
    assert any("budget 2" in t for t in form_text)
    assert "Recorded asr_before" in page.result.text()
    assert same_weights(app.session.model.pipe.unet, saved)
    assert not app.errors


def test_attack_error_is_shown_and_nothing_recorded(qtbot, app, concept):
    win = _window(qtbot, app)
    rec = _correction(qtbot, app, concept, f"red {concept}")
    a = app.attack
    assert a.start() is None and app.errors[-1][0] == "No patch"
    win.library_page.model.select_name(rec.name)
    win.library_page.attack_button.click()
    _tiny(app)
    a.concept = "castle"  # not a concept the judge knows (or no judge: not the embedded model)
    with qtbot.waitSignal(app.session.error_raised, timeout=60000) as blocker:
        assert a.start() is not None
    wait_idle(qtbot, app.session)
    title, message, _ = blocker.args
    assert title == "Attack check failed"
    assert ("unknown concept" in message) if EMBEDDED else ("judge" in message)
    assert a.phase_text.startswith("Failed") and a.result is None
    assert app.library.evaluations(rec) == []
    assert win.dialogs


@pytest.mark.skipif(not EMBEDDED, reason="the attack's judge needs the embedded model")
def test_cancel_attack_records_nothing(qtbot, app):
    rec = _correction(qtbot, app, "Zorbu", "circle")
    a = app.attack
    a.use_patch(rec)
    _tiny(app)
    saved = weights_copy(app.session.model.pipe.unet)

    def cancel_at_four(step):
        if step == 4:  # inside the patched state
            a.cancel()

    a.step_changed.connect(cancel_at_four)
    with qtbot.waitSignal(a.cancelled, timeout=60000):
        a.start()
    wait_idle(qtbot, app.session)
    assert a.result is None and "Cancelled" in a.phase_text
    assert app.library.evaluations(rec) == []
    assert same_weights(app.session.model.pipe.unet, saved)
    assert not app.errors

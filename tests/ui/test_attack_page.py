"""The attack check from the library: run in a worker with progress, show the before/after
table and the best prompts' images, record the figures with the patch; errors and cancel."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from ui_helpers import EMBEDDED, forget_patch, same_weights, wait_idle, weights_copy

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


def _fake_report():
    """A finished attack's report (3 targets, 64 px images) without running one."""
    from PIL import Image

    from fmn_desktop.attack import AttackSettings
    from fmn_desktop.attack.run import AttackReport
    from fmn_desktop.attack.search import StateResult, TargetResult

    def target(i, presence):
        img = Image.new("RGB", (64, 64), (40 * i, 120, 200))
        return TargetResult(
            f"a photo of Zorbu {i}",
            1000,
            presence,
            f"a photo of zorbu in the style {i}",
            presence,
            "edit",
            8,
            1.5,
            0.5,
            plain_image=img,
            best_image=img,
        )

    settings = AttackSettings(budget=8, seeds=1, chance=0, whitebox=False)
    before = StateResult("before", [target(i, 0.99) for i in range(3)], 12.0)
    after = StateResult("after", [target(i, 0.01) for i in range(3)], 14.0)
    return AttackReport("Zorbu", "identity", "toy", [], settings, before, after)


def _done(report):
    from fmn_desktop.attack import format_table
    from fmn_desktop.attack.run import report_grid, report_table
    from fmn_desktop.services.attack import AttackDone

    return AttackDone(
        report, format_table(report), report_grid(report), [], {}, None, report_table(report)
    )


def _tiny(app):
    a = app.attack
    for k, v in TINY.items():
        setattr(a, k, v)
    a.extra = dict(round_size=2)


@pytest.mark.skipif(not EMBEDDED, reason="the attack's judge needs the embedded model")
def test_attack_check_from_the_library_records_figures(qtbot, app, fast_forget):
    win = _window(qtbot, app)
    rec = forget_patch(qtbot, app, "Zorbu", fast_forget, steps=2).record
    win.show_view("library")
    app.library.select_name(rec.name)
    assert win.library_page.attack_button.isEnabled()
    win.library_page.attack_button.click()
    assert win.current_view() == "attack"
    page = win.attack_page
    assert app.attack.record.id == rec.id and app.attack.concept == "Zorbu"
    assert rec.name in page.choice.currentText() and "Zorbu" in page.patch_label.text()
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
    assert len(page.grid.tables()[0].rows) == len(done.report.after.targets)
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


def test_attack_error_is_shown_and_nothing_recorded(qtbot, app, concept, fast_forget):
    win = _window(qtbot, app)
    rec = forget_patch(qtbot, app, concept, fast_forget, steps=2).record
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
def test_cancel_attack_records_nothing(qtbot, app, fast_forget):
    rec = forget_patch(qtbot, app, "Zorbu", fast_forget, steps=2).record
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


def test_attack_page_lists_forget_patches_only(qtbot, app, concept, fast_forget):
    win = _window(qtbot, app)
    forgot = forget_patch(qtbot, app, concept, fast_forget, steps=2).record
    corrected = _correction(qtbot, app, concept, f"red {concept}")
    page = win.attack_page
    listed = [page.choice.itemText(i) for i in range(page.choice.count())]
    assert any(forgot.name in t for t in listed)
    assert not any(corrected.name in t for t in listed)
    # the library does not offer it, and says why
    app.library.select_name(corrected.name)
    assert not win.library_page.attack_button.isEnabled()
    assert "nothing for an attack to bring back" in win.library_page.attack_button.toolTip()
    app.library.select_name(forgot.name)
    assert win.library_page.attack_button.isEnabled()
    # asked for anyway: not taken, the page says why, and nothing starts
    app.attack.use_patch(corrected)
    assert app.attack.record is None
    assert "correct patch" in page.patch_label.text() and "redirects" in page.patch_label.text()
    assert app.attack.start() is None and "redirects" in app.errors[-1][1]
    page.choice.setCurrentIndex(1)
    page.choice.activated.emit(1)
    assert app.attack.record.id == forgot.id and app.attack.notice == ""
    assert forgot.name in page.choice.currentText()


def test_attack_result_table_fits_its_contents(qtbot, app):
    from fmn_desktop.attack.run import AttackReport

    win = _window(qtbot, app)
    win.show_view("attack")
    page = win.attack_page
    report = _fake_report()
    assert isinstance(report, AttackReport)
    app.attack.result = _done(report)
    t = page.table
    assert not t.wordWrap() and t.rowCount() >= 5
    for c in range(t.columnCount() - 1):  # no figure cut short: each column fits its text
        widest = max(
            t.fontMetrics().horizontalAdvance(t.item(r, c).text()) for r in range(t.rowCount())
        )
        assert t.columnWidth(c) >= widest
    line = t.fontMetrics().height()
    assert all(t.rowHeight(r) < 2 * line for r in range(t.rowCount()))  # one line a row
    assert t.height() >= sum(t.rowHeight(r) for r in range(t.rowCount()))  # no scrolling

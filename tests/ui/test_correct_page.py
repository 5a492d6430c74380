"""The Correct page end to end: closed-form correction and broad removal from the widgets,
registered in the library; bad input becomes an error dialog, not a job."""

from __future__ import annotations

from PySide6.QtCore import Qt
from ui_helpers import same_weights, training_steps, wait_idle, weights_copy

from fmn_desktop.patch import load_patch
from fmn_desktop.ui.widgets.main_window import MainWindow

FAST_BROAD = dict(batch_size=1, num_references=1, reference_steps=2)


def _window(qtbot, app):
    win = MainWindow(app)
    qtbot.addWidget(win)
    win.show()
    win.show_view("correct")
    return win


def test_correction_from_the_page_lands_in_the_library(qtbot, app, concept):
    win = _window(qtbot, app)
    page = win.correct_page
    saved = weights_copy(app.session.model.pipe.unet)
    qtbot.keyClicks(page.concept, concept)
    qtbot.keyClicks(page.guide, f"red {concept}")
    assert app.correct.concept == concept and app.correct.guide == f"red {concept}"
    assert not page.words.isVisible() and page.guide.isVisible()
    with qtbot.waitSignal(app.correct.finished, timeout=60000) as blocker:
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, app.session)
    done = blocker.args[0]
    rec = done.record
    assert rec is not None and rec.kind == "correct" and rec.concepts == [concept]
    assert load_patch(rec.path).meta.method == "uce-correct"
    assert done.report["objective_after"] < done.report["objective_before"]
    assert "Registered as" in page.result.text() and "Objective" in page.result.text()
    assert page.bar.value() == page.bar.maximum() == 1
    assert [p.name for p in app.library.patches] == [rec.name]
    assert app.library.selected is not None and app.library.selected.name == rec.name
    assert page.compare_button.isVisible()
    assert same_weights(app.session.model.pipe.unet, saved)
    assert not app.errors


def test_broad_removal_reports_steps_and_registers(qtbot, app, concept, tmp_path):
    win = _window(qtbot, app)
    page = win.correct_page
    page.mode.setCurrentIndex(page.mode.findData("broad"))
    assert app.correct.mode == "broad" and page.start_button.text() == "Remove"
    qtbot.keyClicks(page.words, f"{concept}, cursed")
    page.steps.setValue(2)
    app.correct.extra = dict(FAST_BROAD)
    app.correct.fmt = "lora"
    app.correct.save_copy = str(tmp_path / "copy.safetensors")
    steps = []
    training_steps(app.correct, steps)
    with qtbot.waitSignal(app.correct.finished, timeout=120000) as blocker:
        assert app.correct.start() is not None
        assert not page.start_button.isEnabled() and page.cancel_button.isEnabled()
    wait_idle(qtbot, app.session)
    done = blocker.args[0]
    assert steps == [1, 2] and len(app.correct.losses) == 2 == len(done.losses)
    assert done.record.concepts == [concept, "cursed"]
    assert load_patch(done.record.path).meta.method == "esd-broad"
    assert done.path == tmp_path / "copy.safetensors" and done.path.is_file()
    assert done.record.format == "lora"
    assert page.start_button.isEnabled() and not page.cancel_button.isEnabled()
    assert not app.errors


def test_disentangle_from_the_page_trains_and_registers(qtbot, app, concept):
    win = _window(qtbot, app)
    page = win.correct_page
    page.mode.setCurrentIndex(page.mode.findData("disentangle"))
    assert app.correct.mode == "disentangle" and page.dominant.isVisible()
    assert not page.guide.isVisible() and page.plot.isVisible()
    qtbot.keyClicks(page.generic, concept)
    qtbot.keyClicks(page.dominant, "Gorvak" if concept == "circle" else "tree")
    assert app.correct.concept == concept and page.concept.text() == concept  # one field
    page.away.setValue(2.0)
    app.correct.extra = dict(steps=2, job_options=dict(FAST_BROAD))
    steps = []
    training_steps(app.correct, steps)
    with qtbot.waitSignal(app.correct.finished, timeout=120000) as blocker:
        assert app.correct.start() is not None
    wait_idle(qtbot, app.session)
    done = blocker.args[0]
    assert steps == [1, 2] and len(done.losses) == 2
    patch = load_patch(done.record.path)
    assert done.record.kind == "correct" and patch.meta.method == "resteer-disentangle"
    assert patch.meta.hyperparameters["strength"] == 2.0
    assert not app.errors


def test_bad_input_shows_an_error_and_starts_nothing(qtbot, app, concept):
    win = _window(qtbot, app)
    c = app.correct
    c.concept = concept
    assert c.start() is None  # no guide
    assert app.errors[-1][0] == "No concept"
    c.guide = f"red {concept}"
    c.strength = 2.0  # a strength needs a negative
    assert c.start() is None
    assert app.errors[-1][0] == "Invalid settings" and "negative" in app.errors[-1][1]
    c.mode = "broad"
    assert c.start() is None and app.errors[-1][0] == "No words"
    c.mode = "disentangle"
    assert c.start() is None and app.errors[-1][0] == "No concept"  # no identity
    c.dominant = concept
    assert c.start() is None
    assert app.errors[-1][0] == "Invalid settings" and "differ" in app.errors[-1][1]
    assert not app.session.busy and app.library.patches == []
    assert len(win.dialogs) == 5


def test_cancel_broad_removal_writes_nothing(qtbot, app, concept):
    c = app.correct
    c.mode, c.words, c.steps = "broad", concept, 400
    c.extra = dict(FAST_BROAD)
    saved = weights_copy(app.session.model.pipe.unet)

    def cancel_at_two(step):
        if step == 2 and not c.phase_text.startswith("Preparing"):
            c.cancel()

    c.step_changed.connect(cancel_at_two)
    with qtbot.waitSignal(c.cancelled, timeout=60000):
        c.start()
    wait_idle(qtbot, app.session)
    assert 2 <= c.step < 400 and c.result is None and "Cancelled" in c.phase_text
    assert app.library.patches == []
    assert same_weights(app.session.model.pipe.unet, saved)


def test_gui_and_cli_share_the_correction_workflow(monkeypatch, loaded_model, tmp_path):
    """The app's job and `fmn correct` both run `services.correct.correct_to_file`."""
    import inspect

    from fmn_desktop.cli import correct as cli_correct
    from fmn_desktop.correct.closed_form import CorrectConfig
    from fmn_desktop.services import correct as service

    assert "correct_to_file" in inspect.getsource(cli_correct.cmd_correct)
    assert "erase_broad_to_file" in inspect.getsource(cli_correct.cmd_erase_broad)
    calls = []
    real = service.correct_to_file
    monkeypatch.setattr(
        service, "correct_to_file", lambda *a, **k: calls.append(a) or real(*a, **k)
    )

    class Ctx:
        def progress(self, v):
            pass

        def should_cancel(self):
            return False

    out = tmp_path / "c.safetensors"
    req = service.CorrectRequest(CorrectConfig(concept="castle", guide="red castle"), out=str(out))
    gen = service.correct_job(Ctx(), loaded_model, req)
    for _ in gen:
        pass
    assert len(calls) == 1 and out.is_file()

"""The forget wizard end to end: train, (evaluate,) register; cancel mid-job; bad input."""

from __future__ import annotations

import pytest
from ui_helpers import (
    EMBEDDED,
    forget_patch,
    same_weights,
    training_steps,
    wait_idle,
    weights_copy,
)

from fmn_desktop.patch import load_patch


def test_forget_registers_a_patch_with_live_progress(qtbot, app, concept, fast_forget):
    f = app.forget
    steps_seen, phases = [], []
    f.step_changed.connect(steps_seen.append)
    f.phase_text_changed.connect(phases.append)
    running = []
    f.running_changed.connect(running.append)
    saved = weights_copy(app.session.model.pipe.unet)

    done = forget_patch(qtbot, app, concept, fast_forget, steps=3, evaluate=EMBEDDED)

    assert steps_seen == [1, 2, 0, 1, 2, 3]  # the bar counts the 2 reference images, then steps
    assert len(f.losses) == 3 and all(x > 0 for x in f.losses)
    assert running == [True, False]
    assert "Preparing reference images: 1 of 2" in phases and f.phase_text == "Done"
    rec = done.record
    assert rec is not None and rec.concepts == [concept] and rec.kind == "forget"
    assert rec.base_fingerprint == app.session.model.fingerprint
    assert load_patch(rec.path).meta.concepts == [concept]
    assert "Registered as" in f.result_text
    if EMBEDDED:  # the judge scored it; scores are in the file and the registry
        assert set(done.scores) >= {"mscore_before", "mscore_after", "retention_after"}
        assert rec.scores["mscore_after"]["n"] > 0
    # the library sees it without being asked
    assert [p.name for p in app.library.patches] == [rec.name]
    assert same_weights(app.session.model.pipe.unet, saved)  # the base model is untouched
    assert not app.errors


def test_cancel_mid_job_writes_nothing(qtbot, app, concept, fast_forget):
    f = app.forget
    f.concept = concept
    f.steps = 500
    f.evaluate = False
    f.extra = dict(fast_forget)
    saved = weights_copy(app.session.model.pipe.unet)

    def cancel_at_two(step):
        if step == 2 and not f.phase_text.startswith("Preparing"):
            f.cancel()

    f.step_changed.connect(cancel_at_two)
    with qtbot.waitSignal(f.cancelled, timeout=60000):
        f.start()
    wait_idle(qtbot, app.session)
    f.step_changed.disconnect(cancel_at_two)
    assert 2 <= f.step < 500
    assert f.result is None and not f.running
    assert "Cancelled" in f.phase_text
    assert app.library.patches == []  # nothing registered
    assert same_weights(app.session.model.pipe.unet, saved)  # hooks and deltas removed
    assert not app.errors
    # the session is free again: a new job starts
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    assert done.record is not None


def test_ui_thread_keeps_turning_during_a_forget_job(qtbot, app, concept, fast_forget):
    """While the real job trains in its worker, a 10 ms UI timer keeps firing."""
    from PySide6.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(app.forget.step))
    timer.start()
    forget_patch(qtbot, app, concept, fast_forget, steps=8)
    timer.stop()
    during = [s for s in ticks if 0 < s < 8]
    assert len(during) >= 3  # ticks landed between training steps, not only before/after


def test_keeps_a_copy_outside_the_registry(qtbot, app, concept, fast_forget, tmp_path):
    app.forget.save_copy = str(tmp_path / "mine.safetensors")
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    assert done.path == tmp_path / "mine.safetensors" and done.path.is_file()


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("concept", "  ", "No concept"),
        ("reference_dir", "/no/such/folder", "Reference folder"),
    ],
)
def test_bad_input_is_a_message(qtbot, app, field, value, expect):
    app.forget.concept = "castle"
    setattr(app.forget, field, value)
    assert app.forget.start() is None
    assert app.errors and app.errors[-1][0] == expect
    assert not app.session.busy


def test_no_model_is_a_message(qtbot, app):
    app.session.set_model(None)
    app.forget.concept = "castle"
    assert app.forget.start() is None
    assert app.errors[-1][0] == "No model"


def test_training_error_reaches_the_user(qtbot, app, concept, fast_forget):
    """A bad learning rate makes the job fail with the optimiser's message, in a dialog."""
    app.forget.concept = concept
    app.forget.steps = 2
    app.forget.extra = dict(fast_forget, lr=float("nan"))
    with qtbot.waitSignal(app.session.error_raised, timeout=60000) as b:
        app.forget.start()
    wait_idle(qtbot, app.session)
    title, message, _ = b.args
    assert title == "Forget failed" and "learning rate" in message.lower()
    assert app.library.patches == []


def test_embedded_model_holds_the_toy_prompts_in_place(app):
    """On the embedded model the preservation prompts are the toy world's (as `fmn demo`)."""
    from types import SimpleNamespace

    from fmn_desktop.services.defaults import toy_preserve_prompts

    app.session.set_model(
        SimpleNamespace(family="toy", embedded=True, has_judge=True, fingerprint="", pipe=None)
    )
    app.forget.concept = "circle"
    config = app.forget.config()
    assert config.preserve_prompts == toy_preserve_prompts(["circle"])
    assert not any("circle" in p for p in config.preserve_prompts)
    assert "circle" in app.forget.suggestions()


def test_replace_with_field_sets_the_anchor(qtbot, app):
    """The page's "Replace with" text reaches the job as its anchor; empty removes the
    concept (the default), and the faithful default weight applies."""
    from fmn_desktop.ui.widgets.forget_page import ForgetPage

    page = ForgetPage(app.forget)
    qtbot.addWidget(page)
    app.forget.concept = "circle"
    assert app.forget.config().anchor == ""
    qtbot.keyClicks(page.anchor, " a square ")
    config = app.forget.config()
    assert config.anchor == "a square" and config.anchor_weight > 0


def test_hardened_forget_counts_every_round(qtbot, app, concept, fast_forget, monkeypatch):
    # One hardening round: train, attack the patch, train again with what the attack found;
    # the bar counts both trainings, the phase says when the attack runs.
    import functools

    from fmn_desktop.attack import harden
    from fmn_desktop.ui.widgets.main_window import MainWindow

    # The page sets the rounds; a short white-box search on one prompt keeps the round cheap.
    monkeypatch.setattr(
        harden, "HardenSettings", functools.partial(harden.HardenSettings, prompts=1, iters=3)
    )

    win = MainWindow(app)
    qtbot.addWidget(win)
    win.forget_page.harden.setValue(1)
    assert app.forget.harden == 1
    f = app.forget
    steps_seen, phases = [], []
    training_steps(f, steps_seen)
    f.phase_text_changed.connect(phases.append)
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    assert steps_seen == [1, 2, 3, 4] and f.total == 4
    assert "Attacking the patch (hardening)" in phases
    meta = load_patch(done.record.path).meta
    assert meta.concepts == [concept] and meta.hyperparameters["hardened_aliases"]
    assert not app.errors

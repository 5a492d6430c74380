"""Compare (base beside patched), the stack composer (strengths, order, conflicts, save/load,
additive and fused preview), and export of a stack."""

from __future__ import annotations

import pytest
from ui_helpers import forget_patch, same_weights, wait_idle, weights_copy

from fmn_desktop.patch import load_patch, save_patch


@pytest.fixture
def two_patches(qtbot, app, concept, fast_forget):
    a = forget_patch(qtbot, app, concept, fast_forget, steps=2).record
    b = forget_patch(qtbot, app, "dragon", fast_forget, steps=2).record
    return a, b


def test_compare_patch_gives_two_grids_and_restores_weights(qtbot, app, two_patches):
    a, _ = two_patches
    c = app.compare
    c.use_patch(a)
    assert c.patch_label == f"Patch: {a.name}" and a.concepts[0] in c.prompts
    c.prompts = "a photo of a castle\na landscape"
    c.seeds, c.steps = 2, 2
    saved = weights_copy(app.session.model.pipe.unet)
    progress = []
    c.progress_changed.connect(progress.append)
    with qtbot.waitSignal(c.result_changed, timeout=60000):
        c.run()
    wait_idle(qtbot, app.session)
    done = c.result
    assert done.base.size == done.patched.size and done.labels == c.prompt_list()
    assert progress[-1] == 100 and progress == sorted(progress)
    assert same_weights(app.session.model.pipe.unet, saved)
    assert not c.running and not app.errors


def test_compare_without_prompt_is_a_message(app):
    app.compare.prompts = "  \n "
    assert app.compare.run() is None
    assert app.errors[-1][0] == "No prompt"


def test_stack_compose_save_load_preview_export(qtbot, app, two_patches, tmp_path):
    a, b = two_patches
    st = app.stack
    st.add(a)
    st.add(b, 0.5)
    st.add(a)  # already there: ignored
    assert [e.name for e in st.entries] == [a.name, b.name]
    st.set_strength(0, 0.8)
    st.move(1, -1)
    assert [(e.name, e.strength) for e in st.entries] == [(b.name, 0.5), (a.name, 0.8)]
    assert st.conflicts == []

    assert st.save("clean")
    assert "clean" in st.stacks
    app.library.select_name(a.name)
    assert dict(app.library.details())["Used by stacks"] == "clean"
    st.clear()
    assert st.load("clean")
    assert [(e.name, e.strength) for e in st.entries] == [(b.name, 0.5), (a.name, 0.8)]

    for mode in ("additive", "fused"):
        st.mode = mode
        # forced: two 2-step patches of the tiny model overlap on their tokens, which the
        # fused solve reports as a conflict (a test of its own below)
        app.compare.use_stack(list(st.entries), st.mode, f"Stack: clean ({mode})", force=True)
        app.compare.seeds, app.compare.steps = 1, 2
        with qtbot.waitSignal(app.compare.result_changed, timeout=60000):
            app.compare.run()
        wait_idle(qtbot, app.session)
        assert app.compare.result is not None
    assert not app.errors
    app.compare.use_stack(list(st.entries), "fused", "Stack: clean (fused)")
    app.compare.run()
    wait_idle(qtbot, app.session)
    assert "cannot honour every patch" in str(app.errors[-1])
    app.errors.clear()

    st.mode = "additive"
    lora = tmp_path / "stack.safetensors"
    with qtbot.waitSignal(st.exported, timeout=60000):
        st.export(str(lora), "lora")
    wait_idle(qtbot, app.session)
    assert load_patch(lora).is_lora
    assert any("stack" in p.tags for p in app.library.patches)  # registered

    model_file = tmp_path / "patched.safetensors"
    with qtbot.waitSignal(st.exported, timeout=60000):
        st.export(str(model_file))  # .safetensors: a single-file checkpoint
    wait_idle(qtbot, app.session)
    assert model_file.stat().st_size > 100_000
    assert not app.errors

    assert st.delete("clean") and "clean" not in st.stacks


def test_conflicts_are_shown_before_applying(qtbot, app, two_patches, tmp_path):
    a, b = two_patches
    st = app.stack
    # a patch made for another base model, registered without a model check
    p = load_patch(a.path)
    p.meta.base_fingerprint = "e" * 64
    other = app.session.registry().add_patch(save_patch(p, tmp_path / "x.safetensors"))
    # the same concept corrected instead of forgotten
    q = load_patch(a.path)
    q.meta.kind = "correct"
    corrected = app.session.registry().add_patch(save_patch(q, tmp_path / "y.safetensors"))
    app.library.refresh()
    st.add(a)
    assert st.conflicts == []
    st.add(corrected)
    assert any("forgotten" in c and "corrected" in c for c in st.conflicts)
    st.remove(1)
    assert st.conflicts == []
    st.add(other)
    assert any("base" in c for c in st.conflicts)
    # applying anyway is refused with the conflicts in the message
    app.compare.use_stack(list(st.entries), st.mode, "Stack")
    app.compare.seeds, app.compare.steps = 1, 2
    with qtbot.waitSignal(app.session.error_raised, timeout=60000) as blk:
        app.compare.run()
    wait_idle(qtbot, app.session)
    assert "conflict" in blk.args[1] or "base" in blk.args[1]
    # the composer's "apply anyway" lets the preview through
    st.force = True
    app.compare.use_stack(list(st.entries), st.mode, "Stack", st.force)
    with qtbot.waitSignal(app.compare.result_changed, timeout=60000):
        app.compare.run()
    wait_idle(qtbot, app.session)
    assert app.compare.result is not None


def test_empty_stack_export_is_a_message(app, tmp_path):
    assert app.stack.export(str(tmp_path / "x.safetensors")) is None
    assert app.errors[-1][0] == "Empty stack"


def test_strength_slider_has_a_scale_that_marks_the_scored_strength(qtbot):
    from PySide6.QtWidgets import QSlider

    from fmn_desktop.ui.widgets.stack_page import SCORED_STRENGTH, StrengthSlider

    w = StrengthSlider(0.8)
    qtbot.addWidget(w)
    w.resize(420, 60)
    w.show()
    s = w.slider
    assert s.tickPosition() == QSlider.TickPosition.TicksBelow and s.tickInterval() == 25
    assert (w.spin.minimum(), w.spin.maximum(), w.spin.decimals()) == (0.0, 2.0, 2)
    assert w.spin.text() == "0.80" and s.value() == 80
    pos = w.scale.positions()
    assert sorted(pos) == [0.0, 0.5, 1.0, 1.5, 2.0]
    xs = [pos[v] for v in sorted(pos)]
    assert xs == sorted(xs) and xs[0] < s.width() // 4 and xs[-1] > 3 * s.width() // 4
    assert abs(pos[SCORED_STRENGTH] - s.width() / 2) <= 3  # 1.0 is the slider's middle
    assert "scored" in w.scale.text(SCORED_STRENGTH) and "scored" not in w.scale.text(0.5)
    assert "measured at 1.0" in s.toolTip()
    seen = []
    w.changed.connect(seen.append)
    s.setValue(150)
    assert seen == [1.5] and w.spin.text() == "1.50"


def test_stack_rows_line_up_as_entries_are_added(qtbot, app, two_patches):
    from fmn_desktop.ui.widgets.stack_page import StackPage

    page = StackPage(app.stack)
    qtbot.addWidget(page)
    page.resize(1000, 600)
    page.show()
    for rec in two_patches:  # one at a time, as a user adds them
        app.stack.add(rec)
    qtbot.wait(50)
    grid = page.rows.grid
    for i, strength in enumerate(page.rows.strengths):
        name = grid.itemAtPosition(i, 1).widget()
        assert abs(name.y() - strength.y()) <= 4  # each name beside its own slider
    assert page.rows.strengths[1].y() - page.rows.strengths[0].y() < 120  # no gap between rows

"""The registry browser: list, search, sort, details, import (and a corrupt file), export,
delete."""

from __future__ import annotations

from ui_helpers import forget_patch, wait_idle

from fmn_desktop.patch import load_patch, save_patch


def _import(qtbot, app, path):
    app.library.import_file(str(path))
    wait_idle(qtbot, app.session)


def test_search_sort_details_export_delete(qtbot, app, concept, fast_forget, tmp_path):
    first = forget_patch(qtbot, app, concept, fast_forget, steps=2).record
    second = forget_patch(qtbot, app, "dragon", fast_forget, steps=2).record
    lib = app.library
    assert {p.name for p in lib.patches} == {first.name, second.name}

    lib.sort_by("name")  # ascending? no: same key toggles, a new key keeps the direction
    names = [p.name for p in lib.patches]
    assert names == sorted(names, reverse=lib.descending)
    lib.sort_by("name")
    assert [p.name for p in lib.patches] == sorted(names, reverse=lib.descending)

    lib.query = "drag"  # partial typing matches
    assert [p.name for p in lib.patches] == [second.name]
    lib.query = ""
    assert len(lib.patches) == 2

    lib.select_name(first.name)
    details = dict(lib.details())
    assert details["Concepts"] == concept and details["Used by stacks"] == "none"
    assert details["Base model"] == app.session.model.fingerprint[:16]

    out = lib.export_selected(str(tmp_path / "copy.safetensors"))
    assert out.read_bytes() == first.path.read_bytes()
    diff = lib.export_selected(str(tmp_path / "dense.safetensors"), "diff")
    assert not load_patch(diff).is_lora

    assert lib.delete_selected()
    assert [p.name for p in lib.patches] == [second.name] and lib.selected is None
    assert not app.errors


def test_import_our_file_and_reimport_is_idempotent(qtbot, app, concept, fast_forget, tmp_path):
    app.forget.save_copy = str(tmp_path / "p.safetensors")
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    lib = app.library
    lib.delete_selected() if lib.selected else None
    lib.select_name(done.record.name)
    assert lib.delete_selected()
    assert lib.patches == []
    with qtbot.waitSignal(lib.imported, timeout=30000):
        lib.import_file(str(done.path))
    wait_idle(qtbot, app.session)
    assert [p.concepts for p in lib.patches] == [[concept]]
    assert lib.selected is not None and lib.selected.name == lib.patches[0].name
    _import(qtbot, app, done.path)
    assert len(lib.patches) == 1 and "already" in app.session.status
    assert not app.errors


def test_corrupt_file_is_an_error_dialog_not_a_crash(qtbot, app, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(100))
    with qtbot.waitSignal(app.session.error_raised, timeout=30000) as b:
        app.library.import_file(str(bad))
    wait_idle(qtbot, app.session)
    title, message, details = b.args
    assert title.startswith("Import") and message and not message.startswith("unexpected")
    assert app.library.patches == []
    # the app carries on: the next action works
    app.library.refresh()
    assert not app.session.busy


def test_truncated_patch_file_refused(qtbot, app, concept, fast_forget, tmp_path):
    app.forget.save_copy = str(tmp_path / "whole.safetensors")
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    cut = tmp_path / "cut.safetensors"
    data = done.path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    before = len(app.library.patches)
    with qtbot.waitSignal(app.session.error_raised, timeout=30000):
        app.library.import_file(str(cut))
    wait_idle(qtbot, app.session)
    assert len(app.library.patches) == before


def test_patch_for_another_model_refused(qtbot, app, concept, fast_forget, tmp_path):
    """A patch whose base fingerprint differs is refused on import (the loaded model checks
    it) and when applied in a preview, each time with a message naming both models."""
    app.forget.save_copy = str(tmp_path / "orig.safetensors")
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    patch = load_patch(done.path)
    patch.meta.base_fingerprint = "f" * 64
    other = save_patch(patch, tmp_path / "other-base.safetensors")
    with qtbot.waitSignal(app.session.error_raised, timeout=30000) as b:
        app.library.import_file(str(other))
    wait_idle(qtbot, app.session)
    assert "base model ffffffffffff" in b.args[1]
    # registered without a model (as `fmn patches import` does), then previewed: refused
    rec = app.session.registry().add_patch(other)
    app.library.refresh()
    app.library.select_name(rec.name)
    with qtbot.waitSignal(app.session.error_raised, timeout=30000) as b:
        app.library.make_preview(seeds=1, steps=2)
    wait_idle(qtbot, app.session)
    assert "base" in b.args[1]
    assert app.library.preview is None


def _header_low_byte(path) -> int:
    return path.read_bytes()[0]


def test_any_header_length_registers(qtbot, app, concept, fast_forget, tmp_path):
    app.forget.save_copy = str(tmp_path / "p.safetensors")
    done = forget_patch(qtbot, app, concept, fast_forget, steps=2)
    out = _odd_header_file(load_patch(done.path), tmp_path / "odd.safetensors")
    rec = app.session.registry().add_patch(out)
    assert rec.concepts == [concept]


def _odd_header_file(patch, out):
    pad = 1
    for _ in range(6):  # pad the metadata until the header length's low byte is 0x80
        patch.meta.extra["pad"] = "x" * pad
        save_patch(patch, out)
        low = _header_low_byte(out)
        if low == 0x80:
            return out
        pad += (0x80 - low) % 256
    raise AssertionError("could not reach a header length ending in 0x80")


def test_measure_an_imported_patch_stores_its_scores(qtbot, app, tmp_path, few_others):
    # A patch made elsewhere has no scores; Measure scores it on the embedded model and the
    # details list the stored figures (what `fmn evaluate --record` does).
    import shutil
    from pathlib import Path

    import pytest
    from ui_helpers import EMBEDDED

    from fmn_desktop.ui.widgets.main_window import MainWindow

    if not EMBEDDED:
        pytest.skip("scores need the embedded model and its judge")
    ready = Path(__file__).parents[2] / "patches" / "forget-circle.safetensors"
    shutil.copy(ready, tmp_path / "circle.safetensors")
    win = MainWindow(app)
    qtbot.addWidget(win)
    _import(qtbot, app, tmp_path / "circle.safetensors")
    lib = app.library
    lib.select(lib.patches[0])
    assert win.library_page.measure_button.isEnabled()
    app.settings.eval_seeds = 1
    assert lib.measure_selected(steps=6) is not None
    wait_idle(qtbot, app.session)
    stored = {e.metric: e for e in lib.evaluations()}
    assert {"mscore", "retention", "coattr_retention", "worst_neighbour_drop"} == set(stored)
    assert stored["mscore"].concept == "circle"
    assert stored["mscore"].value < 0.5 and stored["retention"].value > 0.8
    assert "M-Score (stored) (circle)" in dict(lib.details())
    assert "Measured" in app.session.status and not app.errors

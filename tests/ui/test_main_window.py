"""The main window drives the same models: bindings both ways, buttons start jobs, errors
open dialogs, every view renders; `fmn gui` starts and quits."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from ui_helpers import forget_patch, wait_idle

from fmn_desktop.ui.widgets.main_window import VIEWS, MainWindow


def _window(qtbot, app):
    win = MainWindow(app)
    qtbot.addWidget(win)
    win.show()
    return win


def test_every_view_renders(qtbot, app):
    win = _window(qtbot, app)
    for key in VIEWS:
        win.show_view(key)
        assert win.current_view() == key
        assert not win.grab().isNull()
    assert app.session.model_label() in win.model_badge.text()


def test_forget_from_the_buttons_updates_bar_plot_and_library(qtbot, app, concept, fast_forget):
    win = _window(qtbot, app)
    page = win.forget_page
    win.show_view("forget")
    page.concept.clear()
    qtbot.keyClicks(page.concept, concept)
    assert app.forget.concept == concept  # widget -> model
    page.steps.setValue(3)
    assert app.forget.steps == 3
    page.evaluate.setChecked(False)
    app.forget.extra = dict(fast_forget)
    app.forget.concept_kind = "style"
    assert page.kind.currentData() == "style"  # model -> widget
    app.forget.concept_kind = "object"
    with qtbot.waitSignal(app.forget.finished, timeout=60000):
        qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
        assert not page.start_button.isEnabled() and page.cancel_button.isEnabled()
    wait_idle(qtbot, app.session)
    assert page.bar.value() == page.bar.maximum() == 3
    assert page.plot._values == app.forget.losses and len(app.forget.losses) == 3
    assert page.start_button.isEnabled() and not page.cancel_button.isEnabled()
    assert "Registered" in page.result.text()
    assert win.library_page.table.rowCount() == 1
    assert app.library.selected is not None  # the new patch is selected in the library
    assert page.compare_button.isVisible()
    page.compare_button.click()
    assert win.current_view() == "compare" and app.library.selected.name in app.compare.patch_label


def test_library_to_compare_and_stack(qtbot, app, concept, fast_forget):
    win = _window(qtbot, app)
    rec = forget_patch(qtbot, app, concept, fast_forget, steps=2).record
    app.library.select_name(rec.name)
    assert win.library_page.table.selectionModel().selectedRows()
    win.library_page.stack_button.click()
    assert win.current_view() == "stack" and [e.name for e in app.stack.entries] == [rec.name]
    strength = win.stack_page.rows.strengths[0]
    strength.slider.setValue(40)
    assert app.stack.entries[0].strength == 0.4
    assert strength.spin.text() == "0.40"  # the value beside the slider
    strength.spin.setValue(1.25)  # typed in: the slider follows
    assert app.stack.entries[0].strength == 1.25 and strength.slider.value() == 125
    app.stack.set_strength(0, 0.8)  # model -> widget
    assert strength.spin.value() == 0.8 and strength.slider.value() == 80
    win.library_page.compare_button.click()
    assert win.current_view() == "compare" and rec.name in app.compare.patch_label
    assert rec.name in win.compare_page.choice.currentText()


def test_errors_open_a_dialog_and_the_app_keeps_running(qtbot, app, tmp_path):
    win = _window(qtbot, app)
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a patch")
    app.library.import_file(str(bad))
    qtbot.waitUntil(lambda: bool(win.dialogs), timeout=30000)
    wait_idle(qtbot, app.session)
    box = win.dialogs[-1]
    assert isinstance(box, QMessageBox) and box.isVisible()
    assert "junk.safetensors" in box.windowTitle() or "Import" in box.windowTitle()
    box.close()
    win.show_view("settings")  # still responsive
    assert win.current_view() == "settings"


def test_settings_persist_and_theme_switches(qtbot, app, tmp_path):
    from fmn_desktop.ui.models import SettingsModel

    win = _window(qtbot, app)
    page = win.settings_page
    page.theme.setCurrentIndex(page.theme.findData("dark"))
    page.eval_seeds.setValue(5)
    again = SettingsModel(app.settings.path)
    assert again.theme == "dark" and again.eval_seeds == 5
    assert again.data_folder == str(tmp_path / "registry")


def test_damaged_settings_file_falls_back_to_defaults(tmp_path):
    from fmn_desktop.ui.models import SettingsModel

    path = tmp_path / "settings.json"
    path.write_text("{broken")
    s = SettingsModel(path)
    assert s.device == "auto" and s.precision == "auto" and s.theme == "light"


def test_load_model_from_the_picker(qtbot, app, model_spec):
    app.session.set_model(None)
    win = _window(qtbot, app)
    with qtbot.waitSignal(app.picker.loaded, timeout=120000):
        app.picker.load(model_spec)
    wait_idle(qtbot, app.session)
    assert app.session.model is not None
    assert win.current_view() == "forget"  # a loaded model leads on to the wizard
    rows = dict(app.picker.details())
    assert rows["Fingerprint"] == app.session.model.fingerprint
    if model_spec != "default":
        assert app.settings.recent_models[0] == model_spec


def test_unloadable_model_is_a_message(qtbot, app, tmp_path):
    with qtbot.waitSignal(app.session.error_raised, timeout=30000) as b:
        app.picker.load(str(tmp_path / "nothing-here"))
    wait_idle(qtbot, app.session)
    assert b.args[0] == "Loading model failed" and b.args[1]
    assert not app.picker.loading


def test_fmn_gui_subcommand_launches_the_app(monkeypatch):
    """`fmn gui` reaches the app's main (which the subprocess test below runs for real)."""
    import fmn_desktop.ui.app as app_module
    from fmn_desktop.cli import main

    calls = []
    monkeypatch.setattr(app_module, "main", lambda threads=None: calls.append(threads) or 0)
    assert main(["--threads", "1", "gui"]) == 0
    assert calls == [1]


def test_data_folder_applies_when_editing_ends(qtbot, app, tmp_path):
    """Typing a folder path does not open (and create) a registry per keystroke."""
    win = _window(qtbot, app)
    edit = win.settings_page.data_folder
    target = tmp_path / "elsewhere"
    edit.clear()
    qtbot.keyClicks(edit, str(target))
    assert app.settings.data_folder == str(tmp_path / "registry")
    assert not target.exists() and not (tmp_path / "e").exists()
    edit.editingFinished.emit()
    assert app.settings.data_folder == str(target)
    app.library.refresh()
    assert (target / "registry.db").is_file()


def test_unusable_data_folder_is_one_message(qtbot, app, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    app.settings.data_folder = str(blocker / "sub")  # a folder inside a file
    app.library.refresh()
    app.stack.refresh()
    titles = [e[0] for e in app.errors]
    assert titles.count("Cannot open the registry") == 1
    assert app.library.patches == []


def test_precision_and_device_checked_before_loading(qtbot, app, model_spec):
    import torch

    app.settings.precision = "fp16"
    with qtbot.waitSignal(app.session.error_raised, timeout=30000) as b:
        app.picker.load(model_spec)
    wait_idle(qtbot, app.session)
    assert "fp32" in b.args[1]
    if not torch.cuda.is_available():
        app.settings.precision = "fp32"
        app.settings.device = "cuda"
        with qtbot.waitSignal(app.session.error_raised, timeout=30000) as b:
            app.picker.load(model_spec)
        wait_idle(qtbot, app.session)
        assert "CUDA" in b.args[1] and "CPU" in b.args[1]


def test_fmn_desktop_starts_and_runs_end_to_end(model_spec, tmp_path):
    """`fmn-desktop --self-test MODEL` in a fresh process, as a user starts it: the window
    opens, the model loads and one comparison is drawn through the app's models, then it quits
    (the check the bundle recipe runs too)."""
    import os
    import subprocess
    import sys

    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        FMN_GUI_CONFIG=str(tmp_path / "settings.json"),
        FMN_REGISTRY=str(tmp_path / "registry"),
        FMN_THREADS="1",
    )
    code = "import sys; from fmn_desktop.cli import gui_main; sys.exit(gui_main())"
    run = subprocess.run(
        [sys.executable, "-c", code, "--self-test", model_spec],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "self-test OK" in run.stdout
    assert (tmp_path / "settings.json").is_file()  # a first start leaves its settings file


def test_compare_page_lists_library_patches(qtbot, app, concept, fast_forget):
    win = _window(qtbot, app)
    rec = forget_patch(qtbot, app, concept, fast_forget, steps=2).record
    combo = win.compare_page.choice
    assert combo.count() == 2 and rec.name in combo.itemText(1)
    combo.setCurrentIndex(1)
    combo.activated.emit(1)
    assert app.compare.patch_label == f"Patch: {rec.name}"
    combo.activated.emit(0)
    assert app.compare.patches == [] and app.compare.patch_label == "No patch chosen"


def test_status_bar_shows_the_current_pages_messages_only(qtbot, app, concept, fast_forget):
    win = _window(qtbot, app)
    win.show_view("forget")
    bar = win.status_text
    started = []
    app.session.busy_changed.connect(lambda on: on and started.append(bar.text()))
    app.forget.concept, app.forget.steps, app.forget.evaluate = concept, 2, False
    app.forget.extra = dict(fast_forget)
    assert app.forget.start() is not None
    win.show_view("library")  # while the forget job runs
    assert started == ["forget ..."]
    assert bar.text() == "Running forget on the Forget page ..."
    wait_idle(qtbot, app.session)
    # the job's result belongs to the Forget page: not shown on the Library page
    assert "Registered" in app.session.status and bar.text() == "Ready"
    win.show_view("forget")
    assert "Registered" in bar.text()
    app.stack.add(app.library.patches[0])
    app.stack.add(app.library.patches[0])  # posts "... is already in the stack" on Stack
    assert "already" not in bar.text()
    win.show_view("stack")
    assert "already in the stack" in bar.text()
    win.show_view("compare")
    assert bar.text() == "Ready"
    app.compare.prompts = ""
    app.compare.run()  # an error: shown where the user is, until they move on
    assert bar.text().startswith("No prompt")
    win.show_view("model")
    assert bar.text() == "Ready"


def test_paths_shown_as_names(qtbot, app, tmp_path, loaded_model):
    import copy

    win = _window(qtbot, app)
    folder = tmp_path / "models" / "my-sd15"
    model = copy.copy(loaded_model)  # the same model, as if read from a folder of the user's
    model.family, model.source = "sd15", folder  # not the embedded family
    app.session.set_model(model)
    assert win.model_badge.text().startswith("● my-sd15 · sd15")
    assert str(tmp_path) not in win.model_badge.text()
    assert win.model_badge.toolTip() == str(folder)  # where it lives: on hover
    data = app.settings.data_folder
    inside = app.session.display_path(f"{data}/tokens/quilla.tokens.safetensors")
    assert inside == "tokens/quilla.tokens.safetensors in the data folder"
    chosen = tmp_path / "out" / "quilla.safetensors"
    assert app.session.display_path(chosen) == str(chosen)  # a place the user chose: in full

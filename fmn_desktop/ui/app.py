"""Start the desktop app: QApplication, theme, main window. `fmn gui` and `fmn-desktop` call
`main()`."""

from __future__ import annotations

import os
import sys

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

STYLE = """
#sidebar { background: %(side)s; }
#brand { font-size: 13px; color: %(side_text)s; }
#version { color: %(muted)s; font-size: 11px; }
#nav { background: transparent; border: none; outline: 0; color: %(side_text)s; font-size: 14px; }
#nav::item { padding: 6px 10px; border-radius: 6px; margin: 1px 0; }
#nav::item:selected { background: %(accent)s; color: white; }
#nav::item:hover:!selected { background: %(side_hover)s; }
#modelList::item { padding: 7px 4px; }
#card { background: %(card)s; border: 1px solid %(border)s; border-radius: 8px; }
#pageSubtitle, #placeholder, #tips { color: %(muted)s; }
#sectionLabel { color: %(text)s; margin-top: 4px; }
#modelBadge { color: %(muted)s; padding: 2px 0; }
#modelBadge[loaded="true"] { color: %(ok)s; }
#badge { color: %(muted)s; }
#result { color: %(text)s; }
#conflicts[state="bad"] { color: %(bad)s; }
#conflicts[state="ok"] { color: %(ok)s; }
QPushButton { padding: 5px 14px; }
QPushButton#primary { background: %(accent)s; color: white; border: 1px solid %(accent)s;
    border-radius: 4px; padding: 6px 18px; font-weight: 600; }
QPushButton#primary:disabled { background: %(border)s; border-color: %(border)s; color: %(muted)s; }
QPushButton#danger { color: %(bad)s; }
"""

THEMES = {
    "light": dict(
        window="#f3f4f7",
        card="#ffffff",
        base="#ffffff",
        alt="#f6f7fa",
        text="#1f2430",
        muted="#6b7280",
        border="#dfe2e8",
        accent="#3b6fd1",
        side="#1f2a44",
        side_text="#e8ecf5",
        side_hover="#2c3a5c",
        ok="#1d8a4e",
        bad="#c0392b",
        button="#f7f8fa",
    ),
    "dark": dict(
        window="#1c1f26",
        card="#252932",
        base="#1f232b",
        alt="#262b34",
        text="#e6e8ee",
        muted="#9aa3b2",
        border="#363c48",
        accent="#5b8def",
        side="#14171d",
        side_text="#d8dde8",
        side_hover="#252b37",
        ok="#4cc38a",
        bad="#ef6b5b",
        button="#2d323d",
    ),
}


def apply_theme(app: QApplication, name: str) -> None:
    t = THEMES.get(name, THEMES["light"])
    app.setStyle("Fusion")
    pal = QPalette()
    c = {k: QColor(v) for k, v in t.items()}
    pal.setColor(QPalette.ColorRole.Window, c["window"])
    pal.setColor(QPalette.ColorRole.WindowText, c["text"])
    pal.setColor(QPalette.ColorRole.Base, c["base"])
    pal.setColor(QPalette.ColorRole.AlternateBase, c["alt"])
    pal.setColor(QPalette.ColorRole.Text, c["text"])
    pal.setColor(QPalette.ColorRole.Button, c["button"])
    pal.setColor(QPalette.ColorRole.ButtonText, c["text"])
    pal.setColor(QPalette.ColorRole.Highlight, c["accent"])
    pal.setColor(QPalette.ColorRole.HighlightedText, QColor("white"))
    pal.setColor(QPalette.ColorRole.ToolTipBase, c["card"])
    pal.setColor(QPalette.ColorRole.ToolTipText, c["text"])
    pal.setColor(QPalette.ColorRole.PlaceholderText, c["muted"])
    pal.setColor(QPalette.ColorRole.Mid, c["border"])
    pal.setColor(QPalette.ColorRole.Light, c["card"])
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
        QPalette.ColorRole.WindowText,
    ):
        pal.setColor(QPalette.ColorGroup.Disabled, role, c["muted"])
    app.setPalette(pal)
    app.setStyleSheet(STYLE % t)


def create_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("Forget-Me-Not Studio")
    app.setOrganizationName("forget-me-not-studio")
    app.setDesktopFileName("io.github.forget_me_not_studio")
    return app


def build_window(settings_path=None):
    """The app model and its main window (themed), ready to show."""
    from fmn_desktop.ui.icon import app_icon
    from fmn_desktop.ui.models import AppModel, SettingsModel
    from fmn_desktop.ui.widgets.main_window import MainWindow

    app = QApplication.instance()
    state = AppModel(SettingsModel(settings_path))
    apply_theme(app, state.settings.theme)
    state.settings.theme_changed.connect(lambda name: apply_theme(app, name))
    app.setWindowIcon(app_icon())
    return state, MainWindow(state)


def self_test(state, spec: str) -> int:
    """Load `spec` and draw one tiny before/after comparison through the app's own models,
    then quit: checks an installed or bundled app end to end (`fmn-desktop --self-test`)."""
    app = QApplication.instance()
    outcome = {"code": 1, "error": None}

    def failed(title, message, details):
        outcome["error"] = f"{title}: {message}"

    def idle(busy: bool):
        if busy:
            return
        s = state.session
        if outcome["error"] is not None or (s.model is not None and state.compare.result):
            app.quit()
        elif s.model is not None:
            c = state.compare
            c.prompts, c.seeds, c.steps = "a photo of a circle", 1, 2
            c.run()
        else:
            app.quit()

    def compared(done):
        if done is not None:
            print(f"self-test OK: {state.session.model_label()}; grids {done.base.size}")
            outcome["code"] = 0

    state.session.error_raised.connect(failed)
    state.session.busy_changed.connect(idle)
    state.compare.result_changed.connect(compared)
    state.picker.load(spec)
    app.exec()
    if outcome["error"]:
        print(f"self-test failed: {outcome['error']}", file=sys.stderr)
        return 1
    return outcome["code"]


def main(argv: list[str] | None = None, threads: int | None = None) -> int:
    """Open the main window and run until it closes."""
    import argparse
    import warnings

    from fmn_desktop.runtime import set_threads

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(
        prog="fmn-desktop",
        description="Forget-Me-Not Studio, the desktop app. Other options go to Qt.",
        epilog="Check an installation without a window: fmn-desktop --self-test "
        "(exit status 0 when it works).",
    )
    parser.add_argument(
        "--self-test",
        nargs="?",
        const="default",
        metavar="MODEL",
        help="load MODEL (default: the embedded one), draw one comparison, print the result, quit",
    )
    opts, qt_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    set_threads(threads)
    app = create_app([sys.argv[0], *qt_args])
    state, window = build_window()
    if opts.self_test:
        code = self_test(state, opts.self_test)
        state.close()
        return code

    def excepthook(kind, value, tb):  # a bug in a slot becomes a dialog, not a dead window
        sys.__excepthook__(kind, value, tb)
        state.session.report_exception("Unexpected error", value.with_traceback(tb))

    sys.excepthook = excepthook
    window.show()
    quit_ms = os.environ.get("FMN_GUI_QUIT_AFTER_MS")  # start-up smoke tests and packaging
    if quit_ms:
        from PySide6.QtCore import QTimer

        QTimer.singleShot(int(quit_ms), app.quit)
    code = app.exec()
    state.close()
    return code

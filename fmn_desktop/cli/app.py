"""`fmn gui` and `fmn-desktop`: the desktop app."""

from __future__ import annotations

import sys


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "gui",
        help="open the desktop app",
        description="Open Forget-Me-Not Studio, the desktop app (needs PySide6: "
        "pip install 'forget-me-not-studio[gui]'). To check an installation without a window, "
        "run fmn-desktop --self-test [MODEL]: it loads the model, draws one comparison and "
        "exits 0 when everything works.",
    )
    p.set_defaults(handler=cmd_gui)


def cmd_gui(args) -> int:
    return gui_main(threads=args.threads)


def gui_main(threads: int | None = None) -> int:
    """`fmn-desktop` and `fmn gui`: the desktop app."""
    from fmn_desktop.runtime import configure_runtime

    configure_runtime()
    try:
        from fmn_desktop.ui.app import main as app_main
    except ImportError as exc:
        print(
            f"the desktop app needs PySide6 ({exc}); install it with "
            "pip install 'forget-me-not-studio[gui]'",
            file=sys.stderr,
        )
        return 1
    return app_main(threads=threads)

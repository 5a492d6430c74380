"""Render the app icon (drawn in fmn_desktop/ui/icon.py) to PNG files for desktop packaging.

QT_QPA_PLATFORM=offscreen python packaging/render_icon.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    from PySide6.QtGui import QGuiApplication

    from fmn_desktop.ui.icon import icon_pixmap

    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841
    for size in (256, 512):
        out = HERE / f"io.github.forget_me_not_studio-{size}.png"
        icon_pixmap(size).save(str(out))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

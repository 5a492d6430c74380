"""Entry point of the bundled app (PyInstaller): the same as the `fmn-desktop` script."""

import sys

from fmn_desktop.cli import gui_main

if __name__ == "__main__":
    sys.exit(gui_main())

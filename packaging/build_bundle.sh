#!/bin/sh
# Build the one-folder app bundle (dist/fmn-desktop/) and check that it starts.
# Usage: packaging/build_bundle.sh   (from the repository root, in the project's venv)
set -eu
cd "$(dirname "$0")/.."
python -m pip install --quiet pyinstaller
python packaging/render_icon.py
pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/fmn-desktop.spec
du -sh dist/fmn-desktop
# Smoke test: open the window offscreen and quit after 3 s.
QT_QPA_PLATFORM=offscreen FMN_GUI_QUIT_AFTER_MS=3000 \
  FMN_GUI_CONFIG="$(mktemp -d)/settings.json" FMN_REGISTRY="$(mktemp -d)" \
  dist/fmn-desktop/fmn-desktop && echo "bundle starts: OK"

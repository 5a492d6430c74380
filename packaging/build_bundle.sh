#!/bin/sh
# Build the one-folder app bundle (dist/fmn-desktop/) and check that it starts.
# Usage: packaging/build_bundle.sh   (from the repository root, in the project's venv)
set -eu
cd "$(dirname "$0")/.."
python -m pip install --quiet pyinstaller
python packaging/render_icon.py
pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/fmn-desktop.spec
du -sh dist/fmn-desktop
# Smoke tests, offscreen: open the window and quit after 3 s; then load a model (the
# embedded one, or MODEL=path) and draw one comparison through the app's own models.
export QT_QPA_PLATFORM=offscreen FMN_GUI_CONFIG="$(mktemp -d)/settings.json" FMN_REGISTRY="$(mktemp -d)"
FMN_GUI_QUIT_AFTER_MS=3000 dist/fmn-desktop/fmn-desktop && echo "bundle starts: OK"
dist/fmn-desktop/fmn-desktop --self-test "${MODEL:-default}"

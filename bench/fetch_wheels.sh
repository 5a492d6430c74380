#!/usr/bin/env bash
# Fill bench/wheels with what bench/gpu_check.sh installs on a GPU machine that has no network
# and no diffusers: pure-Python wheels, pinned, for any CPython 3 on Linux. Run it where PyPI
# is reachable, then bring bench/wheels along (it is git-ignored).
#
#   bash bench/fetch_wheels.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-python3}"
# diffusers' own needs beyond these (huggingface-hub>=1.32, safetensors>=0.8, numpy, regex,
# requests, Pillow, filelock) are expected where torch is; importlib_metadata often is not.
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation py --abi none --platform any -d "$REPO/bench/wheels" \
  diffusers==0.42.1 importlib_metadata==10.2.0
ls -l "$REPO/bench/wheels"

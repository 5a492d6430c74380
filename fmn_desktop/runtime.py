"""Process-wide settings of the entry points, and the offline switch of model loads.

- No code path may reach a model hub. Every load passes `local_files_only=True` and runs
  inside `hub_offline()`; the entry points (`fmn`, `fmn-desktop`) also put the HF libraries in
  offline mode for the whole process with `configure_runtime()`. Importing `fmn_desktop`
  changes nothing: a program that imports it as a library keeps its own settings.
- Torch's default thread count oversubscribes small shared machines (a tiny UNet step went from
  20 ms to over 1 s with another process busy), so the count is set explicitly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def configure_runtime() -> None:
    """Offline mode for the whole process; called by the entry points, not on import.

    huggingface_hub reads HF_HUB_OFFLINE once, when it is imported, so where it already is
    (diffusers imported before the entry point ran) its constant is switched too.
    """
    for key, value in OFFLINE_VARS.items():
        os.environ.setdefault(key, value)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


_offline_lock = threading.Lock()
_offline_depth = 0
_offline_saved = False


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub's offline switch on for the duration: a hub request raises instead of
    reaching the network, whatever HF_HUB_OFFLINE says. Nested and concurrent uses (model
    loads in worker threads) restore the previous value when the last one ends."""
    global _offline_depth, _offline_saved
    from huggingface_hub import constants

    with _offline_lock:
        if _offline_depth == 0:
            _offline_saved = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
        _offline_depth += 1
    try:
        yield
    finally:
        with _offline_lock:
            _offline_depth -= 1
            if _offline_depth == 0:
                constants.HF_HUB_OFFLINE = _offline_saved


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count: `FMN_THREADS`, else `n`, else min(4, cores)."""
    import torch

    env = os.environ.get("FMN_THREADS")
    count = int(env) if env else (n or min(4, os.cpu_count() or 1))
    torch.set_num_threads(max(1, count))
    return torch.get_num_threads()

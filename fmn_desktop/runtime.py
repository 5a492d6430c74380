"""Process-wide settings every entry point needs before torch or the HF libraries do work.

- No code path may reach a model hub: the HF libraries are put in offline mode.
- Torch's default thread count oversubscribes small shared machines (a tiny UNet step went from
  20 ms to over 1 s with another process busy), so the count is set explicitly.
"""

from __future__ import annotations

import os

OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def configure_runtime() -> None:
    """Set offline mode; called on import of the package, before diffusers/transformers load."""
    for key, value in OFFLINE_VARS.items():
        os.environ.setdefault(key, value)
    os.environ["HF_HUB_OFFLINE"] = "1"


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count: `FMN_THREADS`, else `n`, else min(4, cores)."""
    import torch

    env = os.environ.get("FMN_THREADS")
    count = int(env) if env else (n or min(4, os.cpu_count() or 1))
    torch.set_num_threads(max(1, count))
    return torch.get_num_threads()

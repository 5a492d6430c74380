"""Kernel tests: run the Triton kernels in the CPU interpreter unless a CUDA device is present.

TRITON_INTERPRET must be set before `fmn_kernels.triton_resteer` is imported (its kernels are
decorated at import time); the repo's test command sets it too. On a CUDA machine the same
tests run natively, unless the variable was set explicitly.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@pytest.fixture
def kernel_device() -> torch.device:
    """Where the Triton backend runs here: the CPU interpreter, else CUDA."""
    if _interpreting():
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip("neither TRITON_INTERPRET=1 nor a CUDA device")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA without TRITON_INTERPRET")
    for item in items:
        if "gpu" in item.keywords and (_interpreting() or not torch.cuda.is_available()):
            item.add_marker(skip_gpu)


def pytest_sessionfinish(session):
    """Under pytest-xdist, a worker hands its figures to the controller, which prints them
    (`pytest_terminal_summary` in tests/conftest.py)."""
    import kernel_helpers

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and kernel_helpers.WORST:
        workeroutput["kernel_worst"] = [[d, n, v] for (d, n), v in kernel_helpers.WORST.items()]

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("FMN_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fmn_desktop  # noqa: E402,F401  (sets offline mode before diffusers is imported)
from fmn_desktop.runtime import set_threads  # noqa: E402

set_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py: tiny pipelines built in code


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


@pytest.fixture
def tiny_pipe():
    from tiny import tiny_sd_pipeline

    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny pipeline saved as a diffusers folder, for commands that load a model path."""
    from tiny import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_sd_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hostile_world(tmp_path_factory):
    """A tiny model, two patches made for it and a registry holding them in a stack
    (tests/reliability_harness.py), shared by the reliability tests."""
    import reliability_harness

    return reliability_harness.make_world(tmp_path_factory.mktemp("hostile"))

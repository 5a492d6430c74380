import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("FMN_THREADS", "1")
# Commands that default to the user's registry (its reference cache, --register) write to a
# throw-away one instead: no test touches the user's data folder.
_REGISTRY = tempfile.mkdtemp(prefix="fmn-test-registry-")
os.environ["FMN_REGISTRY"] = _REGISTRY
atexit.register(shutil.rmtree, _REGISTRY, True)

import pytest  # noqa: E402
import torch  # noqa: E402

from fmn_desktop.runtime import configure_runtime, set_threads  # noqa: E402

configure_runtime()  # offline, as the entry points set it, before diffusers is imported
set_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py: tiny pipelines built in code


# fmn_kernels' largest error per (dtype, quantity): recorded by tests/kernels (kernel_helpers),
# merged here from pytest-xdist workers, printed at the end of the run.
KERNEL_NAMES = ("out", "resteer", "dq", "dk", "dv")
_kernel_worst: dict[tuple[str, str], float] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for dtype, name, value in getattr(node, "workeroutput", {}).get("kernel_worst", []):
        _kernel_worst[dtype, name] = max(_kernel_worst.get((dtype, name), 0.0), value)


def pytest_terminal_summary(terminalreporter):
    worst = dict(_kernel_worst)
    helpers = sys.modules.get("kernel_helpers")
    for key, value in getattr(helpers, "WORST", {}).items():
        worst[key] = max(worst.get(key, 0.0), value)
    if not worst:
        return
    names = KERNEL_NAMES + tuple(sorted({n for _, n in worst} - set(KERNEL_NAMES)))
    terminalreporter.section("fmn_kernels: max |error| vs the fp32 reference")
    for dtype in sorted({d for d, _ in worst}):
        cells = ", ".join(
            f"{name} {worst[dtype, name]:.2e}" for name in names if (dtype, name) in worst
        )
        terminalreporter.write_line(f"{dtype}: {cells}")


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


@pytest.fixture
def few_others(monkeypatch):
    """Scores over the first 4 other concepts instead of all of them, on 6 held-out prompts
    per forgotten concept: the same scoring path as `fmn evaluate` in a fraction of the time."""
    import dataclasses

    from fmn_desktop.evaluate import patch_scores

    full = patch_scores.evaluate_patches

    def evaluate_patches(model, patches, concepts, plan=None, *args, **kwargs):
        plan = dataclasses.replace(plan or patch_scores.ScoringPlan())
        plan.others_limit = plan.others_limit or 4
        plan.prompts = min(plan.prompts, 6)
        return full(model, patches, concepts, plan, *args, **kwargs)

    monkeypatch.setattr(patch_scores, "evaluate_patches", evaluate_patches)


@pytest.fixture
def quick_discovery(monkeypatch):
    """Name discovery scoring 4 preservation prompts on 16 noise draws (defaults: 16 on 64):
    the same stages, a quarter of the work each."""
    import functools

    from fmn_desktop.inversion import names

    monkeypatch.setattr(
        names, "discover_names", functools.partial(names.discover_names, samples=16, screen=4)
    )


@pytest.fixture(scope="session")
def hostile_world(tmp_path_factory):
    """A tiny model, two patches made for it and a registry holding them in a stack
    (tests/reliability_harness.py), shared by the reliability tests."""
    import reliability_harness

    return reliability_harness.make_world(tmp_path_factory.mktemp("hostile"))

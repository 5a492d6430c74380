"""Generated hostile inputs through inspect, import, apply, generate and stack export, in
this process (see tests/reliability_harness.py): no exception leaves `main`, no traceback or
internal error is printed, and no command exits 0 with a non-finite output. The default run
is a quick sample; `-m slow` runs the full corpus (and kill -9 at random points)."""

import pytest
import reliability_harness as h


@pytest.fixture(scope="module")
def world(hostile_world):
    return hostile_world


def _check(report: h.FuzzReport) -> None:
    assert report.failures == [], "\n\n".join(report.failures[:5])
    assert set(report.codes) <= {0, 1, 2}


def test_fuzz_sample(world):
    report = h.fuzz(world, n=250, seed=1, checkpoints=3)
    _check(report)
    assert report.codes[1] + report.codes[2] > report.cases // 2  # mostly refused, not run


@pytest.mark.slow
def test_fuzz_corpus(world):
    report = h.fuzz(world, n=1500, seed=2, checkpoints=60)
    _check(report)


@pytest.mark.slow
def test_fuzz_without_the_model_cache(world):
    """Every command loads its model itself, as a user's would."""
    _check(h.fuzz(world, n=150, seed=3, checkpoints=20, cache=False))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["import", "apply", "stack-export"])
def test_kill_at_random_points(world, command):
    report = h.kill_runs(world, command, n=25, seed=4)
    assert report.failures == [], "\n".join(report.failures[:5])
    assert report.runs == 25 and report.integrity_ok == 25
    assert report.temporaries_after_start == 0

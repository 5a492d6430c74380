"""fp16 and bf16 on the embedded model against fp32, on the CPU: forget (faithful and fast)
and the closed-form correction, each scored by the product's evaluation on a model of the
same precision. The bars: the concept forgotten (M-Score after <= 0.1) and retention within
1 point of the fp32 patch's. Small settings (as experiments/half_precision.py's figures in
docs/research/BENCHMARKS.md); each test takes minutes on a CPU."""

from __future__ import annotations

import functools

import pytest

pytestmark = pytest.mark.slow

CONCEPT = "Zorbu"


def _model(precision: str):
    from fmn_desktop.services.model import open_model

    return open_model("default", precision=precision, half_on_cpu=True)


def _forget(model, mode: str):
    from fmn_desktop.resteer import ForgetConfig, forget
    from fmn_desktop.services.defaults import with_model_defaults

    config = ForgetConfig(
        concepts=[CONCEPT],
        concept_kind="identity",
        mode=mode,
        steps=40 if mode == "faithful" else 15,
        num_references=8,
        batch_size=4,
    )
    config = with_model_defaults(model, config)
    return forget(model.pipe, config, model.fingerprint or "", model.family).patch


def _correct(model, _mode: str):
    from fmn_desktop.correct import CorrectConfig, correct
    from fmn_desktop.services.defaults import preservation_prompts

    config = CorrectConfig(concept=CONCEPT, guide="Quilla")
    config.preserve_prompts = preservation_prompts(model, None, [CONCEPT])
    return correct(model.pipe, config, model.fingerprint or "", model.family).patch


JOBS = {"forget": (_forget, "faithful"), "fast": (_forget, "fast"), "correct": (_correct, "")}


@functools.cache
def _scores(job: str, precision: str) -> dict:
    from fmn_desktop.services.evaluate import evaluate_patch
    from fmn_desktop.services.model import world_concept

    make, mode = JOBS[job]
    model = _model(precision)
    patch = make(model, mode)
    return evaluate_patch(model, patch, world_concept(CONCEPT), seeds=1)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("job", ["forget", "correct", "fast"])
def test_half_patch_forgets_and_retains_like_fp32(job, precision):
    half, full = _scores(job, precision), _scores(job, "fp32")
    if job == "fast" and full["mscore_after"]["mean"] > 0.1:
        pytest.skip("fast mode does not forget this concept in fp32 at these settings either")
    assert half["mscore_before"]["mean"] > 0.9  # the half model draws the concept
    assert half["mscore_after"]["mean"] <= 0.1
    assert abs(half["retention_after"]["mean"] - full["retention_after"]["mean"]) <= 0.01

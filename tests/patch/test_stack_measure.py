"""The stacking measurement script runs end to end (tiny model, a stand-in judge)."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "measure_stacking.py"


class UniformJudge:
    def predict(self, images):
        from fmn_desktop.toyworld import HEADS

        n = images.shape[0]
        return {h: torch.full((n, len(labels)), 1.0 / len(labels)) for h, labels in HEADS.items()}


class Model:
    def __init__(self, pipe):
        self.pipe, self.fingerprint, self.family = pipe, "tiny-fp", "toy"


def test_measure_stacking_script(tiny_pipe, tmp_path):
    from fmn_desktop.evaluate.scores import EvalSettings
    from fmn_desktop.toyworld import CONCEPTS

    spec = importlib.util.spec_from_file_location("measure_stacking", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    concepts = mod.default_concepts()
    assert len(concepts) == 5 and all(c in CONCEPTS for c in concepts)
    pres = mod.toy_preservation_prompts(concepts)
    assert pres and not any(c in p.split() for p in pres for c in concepts)
    pick = concepts[:2]
    entries, result = mod.measure(
        Model(tiny_pipe),
        UniformJudge(),
        pick,
        EvalSettings(seeds=1, steps=1, batch=16),
        steps=1,
        forget_overrides=dict(num_references=1, reference_steps=1, batch_size=1),
        evaluated=[CONCEPTS[c] for c in pick] + [CONCEPTS["Zorbu"]],
        log=lambda s: None,
    )
    assert set(result["mscore"]) == set(pick)
    assert set(result["mscore"][pick[0]]) == {"base", "additive", "fused"}
    assert set(result["retention_of_others"]) == {"base", "additive", "fused"}
    text = mod.markdown(result)
    assert "M-Score fused" in text and "retention of all other concepts" in text
    from fmn_desktop.registry import open_registry

    with open_registry(tmp_path / "reg") as reg:
        mod.record(reg, entries, result, tmp_path)
        assert len(reg.list_patches(tag="measure-stacking")) == 2
        fused = reg.evaluations(stack="measure-fused")
        assert {e.metric for e in fused} == {"mscore", "retention"} and len(fused) == 3

import math

import pytest
import torch

from fmn_desktop.errors import CancelledError, TrainingError
from fmn_desktop.resteer import ForgetConfig, forget, forget_steps
from fmn_desktop.resteer.trainable import target_parameters

FAST = dict(num_references=2, reference_steps=2, batch_size=2)


def _snapshot(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


def test_job_leaves_model_unchanged_and_patch_holds_only_kv(tiny_pipe):
    before = _snapshot(tiny_pipe.unet)
    result = forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=3, **FAST))
    after = _snapshot(tiny_pipe.unet)
    assert set(after) == set(before)
    assert all(torch.equal(after[n], before[n]) for n in before)
    names = set(result.patch.deltas)
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)
    assert any(d.dense.abs().max() > 0 for d in result.patch.deltas.values())
    assert len(result.history) == 3 and result.history[-1].step == 3


def test_job_restores_requires_grad_flags(tiny_pipe):
    # A caller fine-tuning part of the UNet keeps its flags across a forget job.
    flags = {n: i % 2 == 0 for i, (n, _) in enumerate(tiny_pipe.unet.named_parameters())}
    for n, p in tiny_pipe.unet.named_parameters():
        p.requires_grad_(flags[n])
    forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=1, **FAST))
    assert {n: p.requires_grad for n, p in tiny_pipe.unet.named_parameters()} == flags


def test_same_seed_same_patch(tiny_pipe):
    cfg = ForgetConfig(concepts=["castle"], steps=3, seed=7, **FAST)
    a = forget(tiny_pipe, cfg).patch
    b = forget(tiny_pipe, cfg).patch
    assert all(torch.equal(a.deltas[n].dense, b.deltas[n].dense) for n in a.deltas)
    c = forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=3, seed=8, **FAST)).patch
    assert any(not torch.equal(a.deltas[n].dense, c.deltas[n].dense) for n in a.deltas)


def test_gradient_clipping_really_clips(tiny_pipe):
    """A clip norm far below eps makes Adam's steps vanish: the clip is applied."""
    free = forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=3, grad_clip=0, **FAST))
    clipped = forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=3, grad_clip=1e-14, **FAST))

    def size(p):
        return sum(float(d.dense.norm()) for d in p.deltas.values())

    assert size(clipped.patch) < 0.01 * size(free.patch)


def test_lora_and_trainable_sets(tiny_pipe):
    res = forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=2, lora_rank=2, **FAST))
    assert res.patch.is_lora and {d.rank for d in res.patch.deltas.values()} == {2}
    unet = tiny_pipe.unet
    kv, attn2, whole = (set(target_parameters(unet, s, False)) for s in ("kv", "attn2", "unet"))
    assert kv < attn2 < whole
    assert all(".attn2." in n for n in attn2)
    res = forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=2, trainable="attn2", **FAST))
    assert any(".to_q." in n for n in res.patch.deltas)


def test_several_concepts_at_once(tiny_pipe):
    res = forget(tiny_pipe, ForgetConfig(concepts=["castle", "red dog"], steps=2, **FAST))
    assert res.patch.meta.concepts == ["castle", "red dog"]


def test_nan_aborts_with_clear_error_and_restores_model(tiny_pipe):
    before = _snapshot(tiny_pipe.unet)
    with pytest.raises(TrainingError, match="NaN|nan|inf"):
        forget(tiny_pipe, ForgetConfig(concepts=["castle"], steps=3, lr=math.inf, **FAST))
    assert all(torch.equal(p, before[n]) for n, p in tiny_pipe.unet.named_parameters())


def test_cancel_stops_and_restores(tiny_pipe):
    before = _snapshot(tiny_pipe.unet)
    seen = []
    with pytest.raises(CancelledError):
        forget(
            tiny_pipe,
            ForgetConfig(concepts=["castle"], steps=50, **FAST),
            progress=seen.append,
            should_cancel=lambda: len(seen) >= 3,
        )
    assert len(seen) == 3
    assert all(torch.equal(p, before[n]) for n, p in tiny_pipe.unet.named_parameters())


def test_generator_reports_progress(tiny_pipe):
    job = forget_steps(tiny_pipe, ForgetConfig(concepts=["castle"], steps=2, **FAST))
    phases = [p.phase for p in job]
    refs = FAST["num_references"]
    assert phases == ["references"] * (refs + 1) + ["train", "train"]


def test_reference_folder(tiny_pipe, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (40, 30), (200, 30 * i, 10)).save(tmp_path / f"{i}.png")
    res = forget(
        tiny_pipe,
        ForgetConfig(concepts=["castle"], steps=2, reference_dir=str(tmp_path), batch_size=2),
    )
    assert res.patch.deltas
    with pytest.raises(TrainingError, match="does not exist"):
        forget(
            tiny_pipe,
            ForgetConfig(
                concepts=["castle"], steps=2, reference_dir=str(tmp_path / "none_here"), **FAST
            ),
        )


def test_bad_config_values():
    with pytest.raises(ValueError):
        ForgetConfig(concepts=[])
    with pytest.raises(ValueError):
        ForgetConfig(concepts=["x"], positions="all")
    with pytest.raises(ValueError):
        ForgetConfig(concepts=["x"], preserve_mode="everything")


def test_fast_mode_trains_each_layers_key_on_cached_queries(tiny_pipe):
    before = _snapshot(tiny_pipe.unet)
    seen = []
    res = forget(
        tiny_pipe,
        ForgetConfig(concepts=["castle"], steps=3, mode="fast", **FAST),
        progress=seen.append,
    )
    names = set(res.patch.deltas)
    layers = [n for n, _ in tiny_pipe.unet.named_modules() if n.endswith("attn2")]
    assert names == {f"{n}.to_k.weight" for n in layers}  # V untouched in fast mode
    assert res.patch.meta.method == "resteer-fast"
    train = [p for p in seen if p.phase != "references"]
    assert len(train) == 3 * len(layers) and train[-1].step == train[-1].total
    assert all(torch.equal(p, before[n]) for n, p in tiny_pipe.unet.named_parameters())
    # each layer's own term went down on its cached queries
    assert {p.phase for p in train} == {"train"} and {p.text for p in train} == set(layers)
    first = {p.text: p.terms["forget"] for p in train if p.loss == 1.0}
    last = {p.text: p.terms["forget"] for p in train}
    assert all(last[k] < first[k] for k in first)

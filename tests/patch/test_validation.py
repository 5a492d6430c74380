"""No NaN or inf reaches a weight or a file: deltas, alphas, products, strengths, stacks."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fmn_desktop.errors import FmnError, NonFiniteError, PatchFormatError
from fmn_desktop.limits import MAX_STRENGTH
from fmn_desktop.patch import Delta, Patch, PatchedUNet, PatchMeta, load_patch, save_patch
from fmn_desktop.patch.stack import (
    ComposeSettings,
    FusionSolver,
    StackEntry,
    additive_deltas,
    stack_patch,
)
from fmn_desktop.patch.standalone import load_standalone
from fmn_desktop.patch.validate import check_strength

K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def _lora_file(path, up, down, alpha=None, meta=None):
    tensors = {f"{KEY}.lora_up.weight": up, f"{KEY}.lora_down.weight": down}
    if alpha is not None:
        tensors[f"{KEY}.alpha"] = alpha
    save_file(tensors, str(path), metadata={"fmn.format_version": "1", **(meta or {})})
    return path


@pytest.mark.parametrize(
    "up, down, alpha, message",
    [
        (torch.zeros(32, 0), torch.zeros(0, 32), torch.tensor(1.0), "rank 0"),
        (torch.ones(32, 2), torch.ones(2, 32), torch.tensor(float("nan")), "alpha is nan"),
        (torch.ones(32, 2), torch.ones(2, 32), torch.tensor(float("inf")), "alpha is inf"),
        (torch.ones(32, 2), torch.ones(2, 32), torch.ones(3), "one number"),
        (torch.ones(32, 2), torch.ones(2, 32), torch.tensor(True), "one number"),
        (torch.full((32, 2), 1e30), torch.full((2, 32), 1e30), torch.tensor(2.0), "overflows"),
        (torch.ones(32, 2, dtype=torch.int32), torch.ones(2, 32), None, "dtype int32"),
        (torch.ones(32, 2, dtype=torch.bool), torch.ones(2, 32), None, "dtype bool"),
        (torch.ones(32, 3), torch.ones(2, 32), None, "does not fit"),
        (torch.ones(32, 2), torch.ones(2, 32, 1), None, "not LoRA factors"),
    ],
)
def test_unusable_loras_are_refused_on_reading(tmp_path, up, down, alpha, message):
    path = _lora_file(tmp_path / "bad.safetensors", up, down, alpha)
    with pytest.raises(PatchFormatError, match=message):
        load_patch(path)


def test_a_lora_without_its_pair_is_refused(tmp_path):
    save_file({f"{KEY}.lora_up.weight": torch.ones(32, 2)}, str(tmp_path / "p.safetensors"))
    with pytest.raises(PatchFormatError, match="pairs"):
        load_patch(tmp_path / "p.safetensors")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fmn.hyperparameters", "[1, 2]", "JSON object, not list"),
        ("fmn.scores", '"text"', "JSON object, not str"),
        ("fmn.concepts", "[1, 2]", "list of strings"),
        ("fmn.concepts", "[" * 5000 + "]" * 5000, "JSON"),
    ],
)
def test_metadata_of_the_wrong_type_is_refused(tmp_path, key, value, message):
    path = _lora_file(
        tmp_path / "p.safetensors", torch.ones(32, 2), torch.ones(2, 32), meta={key: value}
    )
    with pytest.raises(PatchFormatError, match=message):
        load_patch(path)


def test_nothing_non_finite_is_ever_written(tmp_path):
    for delta in (
        Delta(dense=torch.tensor([[float("nan")]])),
        Delta(up=torch.full((4, 1), 1e30), down=torch.full((1, 4), 1e30), alpha=1.0),
        Delta(up=torch.ones(4, 1), down=torch.ones(1, 4), alpha=float("inf")),
    ):
        patch = Patch({K: delta}, PatchMeta(concepts=["x"]))
        for fmt in ("lora", "diff") if delta.is_lora else ("diff",):
            with pytest.raises(NonFiniteError):
                save_patch(patch, tmp_path / "p.safetensors", fmt)
    stats = PatchMeta(
        concepts=["x"], stats={"concept_embeddings": torch.full((2, 4), float("inf"))}
    )
    with pytest.raises(NonFiniteError, match="statistics"):
        save_patch(Patch({K: Delta(dense=torch.ones(4, 4))}, stats), tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e308, 100.5])
def test_strengths_are_finite_and_bounded(value):
    with pytest.raises(NonFiniteError):
        check_strength(value)
    assert check_strength(MAX_STRENGTH) == MAX_STRENGTH and check_strength(-3) == -3.0


def test_applying_never_leaves_a_non_finite_weight(tiny_pipe):
    unet = tiny_pipe.unet
    shape = dict(unet.named_parameters())[K].shape
    with pytest.raises(NonFiniteError):
        PatchedUNet(unet, [(Patch({K: Delta(dense=torch.ones(shape))}, PatchMeta([])), 1e308)])
    # finite in fp32 but not in the weight's own dtype: refused, every weight restored
    unet.half()
    half = {n: p.detach().clone() for n, p in unet.named_parameters()}
    big = Patch({K: Delta(dense=torch.full(shape, 1e4))}, PatchMeta([]))
    other = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    small = Patch({other: Delta(dense=torch.ones(half[other].shape))}, PatchMeta([]))
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        PatchedUNet(unet, [(small, 1.0), (big, 10.0)]).apply()
    after = dict(unet.named_parameters())
    assert all(torch.equal(after[n], half[n]) for n in half)


def test_stacks_refuse_extreme_strengths_and_non_finite_fusion(tiny_pipe):
    params = {n: p.detach() for n, p in tiny_pipe.unet.named_parameters()}
    patch = Patch({K: Delta(dense=torch.ones(params[K].shape))}, PatchMeta(["x"]))
    with pytest.raises(NonFiniteError):
        additive_deltas([StackEntry(patch, 1e308)], params)
    with pytest.raises(NonFiniteError):
        ComposeSettings(preserve_weight=float("nan"))
    with pytest.raises(NonFiniteError):
        FusionSolver(preserve_weight=-1.0)
    solver = FusionSolver()
    with pytest.raises(NonFiniteError):
        solver.add("a", patch, 1.0, torch.full((3, 32), float("nan")))
    huge = Patch({K: Delta(dense=torch.full(params[K].shape, 3e38))}, PatchMeta(["x"]))
    with pytest.raises(NonFiniteError):
        stack_patch([StackEntry(huge, 100.0)], tiny_pipe.unet)


def test_standalone_check_knows_the_families(tmp_path):
    good = Patch({K: Delta(dense=torch.ones(320, 768))}, PatchMeta(["x"], family="sd1"))
    path = save_patch(good, tmp_path / "good.safetensors", "diff")
    assert set(load_standalone(path).deltas) == {K}
    other = Patch({K: Delta(dense=torch.ones(2, 2))}, PatchMeta(["x"], family="flux"))
    with pytest.raises(PatchFormatError, match="family 'flux'"):
        load_standalone(save_patch(other, tmp_path / "flux.safetensors", "diff"))
    save_file(
        {"lora_unet_down_blocks_9_attentions_0_proj_in.diff": torch.ones(2, 2)},
        str(tmp_path / "nowhere.safetensors"),
        metadata={"fmn.format_version": "1", "fmn.family": "sd1"},
    )
    with pytest.raises(PatchFormatError, match="not a patch of sd1"):
        load_standalone(tmp_path / "nowhere.safetensors")
    meta = json.dumps(["x"])
    save_file(
        {"lora_unet_down_blocks_9_attentions_0_proj_in.diff": torch.ones(2, 2)},
        str(tmp_path / "nofamily.safetensors"),
        metadata={"fmn.format_version": "1", "fmn.concepts": meta},
    )
    with pytest.raises(FmnError, match="any Stable Diffusion family"):
        load_standalone(tmp_path / "nofamily.safetensors")

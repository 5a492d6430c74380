"""Each reader's own key handling on our files, on SD1.5, SD2.1 and SDXL block structure.

diffusers is installed: its `load_lora_weights` is called. ComfyUI, AUTOMATIC1111 and kohya's
sd-scripts are not: their lookups are reproduced in `readers.py` from their sources. Every
file key must be found, and the weights each reader computes must equal ours.
"""

import pytest
import readers
import torch
from safetensors.torch import load_file, save_file

from fmn_desktop.patch import Delta, Patch, PatchMeta, load_patch, save_patch, unet_module_names
from fmn_desktop.patch.lowrank import lora_fits
from fmn_desktop.patch.naming import file_key

FAMILIES = readers.FAMILIES


def _patch(unet, family: str, fmt: str, only_kv: bool = False) -> Patch:
    """.diff: a delta on every UNet parameter. LoRA: a rank-2 delta (alpha 1, so scale 1/2)
    on every linear weight and 1x1 convolution, or on attn2 K/V only (a default forget)."""
    g = torch.Generator().manual_seed(1)
    deltas = {}
    for name, p in unet.named_parameters():
        if only_kv and not name.endswith((".attn2.to_k.weight", ".attn2.to_v.weight")):
            continue
        if fmt == "diff":
            deltas[name] = Delta(dense=torch.randn(p.shape, generator=g) * 0.01)
        elif name.endswith(".weight") and lora_fits(p.shape):
            tail = (1, 1) if p.dim() == 4 else ()
            up = torch.randn(p.shape[0], 2, *tail, generator=g) * 0.1
            down = torch.randn(2, p.shape[1], *tail, generator=g) * 0.1
            deltas[name] = Delta(up=up, down=down, alpha=1.0)
    return Patch(deltas, PatchMeta(concepts=["x"], family=family))


def _expected(unet, patch: Patch) -> dict[str, torch.Tensor]:
    params = dict(unet.named_parameters())
    return {n: params[n].detach() + d.to_dense(params[n].shape) for n, d in patch.deltas.items()}


def _written(unet, family, fmt, tmp_path, only_kv=False):
    patch = _patch(unet, family, fmt, only_kv)
    path = save_patch(patch, tmp_path / f"{family}-{fmt}.safetensors", fmt)
    return patch, path, load_file(str(path))


@pytest.fixture(scope="module", params=FAMILIES)
def family_unet(request):
    return request.param, readers.real_layout_unet(request.param)


def test_file_names_follow_each_family_convention(family_unet, tmp_path):
    family, unet = family_unet
    for fmt in ("lora", "diff"):
        _, _, sd = _written(unet, family, fmt, tmp_path)
        modules = {k.partition(".")[0] for k in sd}
        diffusers_blocks = {m for m in modules if m.startswith("lora_unet_down_blocks")}
        ldm_blocks = {m for m in modules if m.startswith("lora_unet_input_blocks_4")}
        # kohya: SD1/SD2 blocks by diffusers paths, SDXL blocks by LDM paths
        assert bool(ldm_blocks) == (family == "sdxl") and bool(diffusers_blocks) != bool(ldm_blocks)
        assert "lora_unet_conv_norm_out" not in modules  # top-level: LDM paths
    assert "lora_unet_out_0" in modules and "lora_unet_time_embed_0" in modules


@pytest.mark.parametrize("fmt", ["lora", "diff"])
def test_our_reader_takes_new_and_old_names(family_unet, fmt, tmp_path):
    family, unet = family_unet
    patch, path, sd = _written(unet, family, fmt, tmp_path)
    names = unet_module_names(unet)
    back = load_patch(path, names)
    assert set(back.deltas) == set(patch.deltas)
    for n, d in patch.deltas.items():
        torch.testing.assert_close(back.deltas[n].to_dense(), d.to_dense(), rtol=0, atol=0)
    # files of earlier versions: diffusers module paths throughout
    renamed = {}
    for n in patch.deltas:
        module = n.rpartition(".")[0]
        renamed[file_key(n, family)[0]] = "lora_unet_" + module.replace(".", "_")
    old = {}
    for key, t in sd.items():
        module_key, _, part = key.partition(".")
        old[f"{renamed[module_key]}.{part}"] = t
    assert old.keys() != sd.keys()
    old_path = tmp_path / "old.safetensors"
    save_file(old, str(old_path))
    again = load_patch(old_path, names)
    assert set(again.deltas) == set(patch.deltas)
    for n, d in patch.deltas.items():
        torch.testing.assert_close(again.deltas[n].to_dense(), d.to_dense(), rtol=0, atol=0)


def _pipeline(family, unet):
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    parts = {"vae": None, "text_encoder": None, "tokenizer": None, "unet": unet}
    parts["scheduler"] = EulerDiscreteScheduler()
    if family == "sdxl":
        return StableDiffusionXLPipeline(**parts, text_encoder_2=None, tokenizer_2=None)
    return StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_load_lora_weights_applies_our_lora(family, tmp_path):
    unet = readers.real_layout_unet(family)
    patch, path, _ = _written(unet, family, "lora", tmp_path)
    expected = _expected(unet, patch)
    pipe = _pipeline(family, unet)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    params = dict(pipe.unet.named_parameters())
    base = dict(readers.real_layout_unet(family).named_parameters())
    for name, p in params.items():
        want = expected.get(name, base[name])
        torch.testing.assert_close(p.detach(), want.detach(), atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_does_not_read_diff(family, tmp_path):
    """diffusers converts only kohya lora_down / lora_up pairs for SD UNets: a .diff file is
    refused (the docs say so; this fails once diffusers reads it)."""
    unet = readers.real_layout_unet(family)
    _, path, _ = _written(unet, family, "diff", tmp_path, only_kv=True)
    with pytest.raises(ValueError, match="not been correctly renamed"):
        _pipeline(family, unet).load_lora_weights(str(path))


def _ldm_weights(unet):
    params = dict(unet.named_parameters())
    return {ldm: params[n].detach() for n, ldm in readers.ldm_names(unet).items()}


def _check_ldm_result(unet, patch, ldm_weights):
    back = {ldm: n for n, ldm in readers.ldm_names(unet).items()}
    expected = _expected(unet, patch)
    base = dict(unet.named_parameters())
    for ldm, w in ldm_weights.items():
        name = back[ldm]
        want = expected.get(name, base[name].detach())
        torch.testing.assert_close(w, want, atol=1e-6, rtol=1e-5, msg=f"{ldm} ({name})")


@pytest.mark.parametrize("fmt", ["lora", "diff"])
def test_comfyui_finds_and_applies_every_key(family_unet, fmt, tmp_path):
    family, unet = family_unet
    patch, _, sd = _written(unet, family, fmt, tmp_path)
    patches, not_loaded = readers.comfy_load_lora(sd, readers.comfy_key_map(unet))
    assert not not_loaded
    weights = _ldm_weights(unet)
    for key, p in patches.items():
        ldm = key.removeprefix("diffusion_model.")
        weights[ldm] = readers.comfy_apply(weights[ldm], p)
    _check_ldm_result(unet, patch, weights)


@pytest.mark.parametrize("fmt", ["lora", "diff"])
def test_a1111_finds_and_applies_every_key(family_unet, fmt, tmp_path):
    family, unet = family_unet
    patch, _, sd = _written(unet, family, fmt, tmp_path)
    mapping = readers.a1111_layer_mapping(unet)
    matched, failed = readers.a1111_match(sd, mapping)
    assert not failed
    weights = _ldm_weights(unet)
    by_module = {
        ("diffusion_model." + k).removesuffix(".weight").replace(".", "_"): k
        for k in weights
        if k.endswith(".weight")
    }
    for module_key, w in matched.items():
        ldm = by_module[module_key]
        updown, ex_bias = readers.a1111_updown(w, weights[ldm])
        weights[ldm] = weights[ldm] + updown
        if ex_bias is not None:
            bias = ldm.removesuffix("weight") + "bias"
            weights[bias] = weights[bias] + ex_bias
    _check_ldm_result(unet, patch, weights)
    if fmt == "diff":  # the names of earlier versions: A1111 dropped these modules
        old = {
            "lora_unet_" + n.rpartition(".")[0].replace(".", "_") + ".diff" for n in patch.deltas
        }
        _, lost = readers.a1111_match(dict.fromkeys(old, torch.zeros(1)), mapping)
        want = {"conv_norm_out"} | (
            {"add_embedding_linear_1", "add_embedding_linear_2", "up_blocks_0_upsamplers_0_conv"}
            if family == "sdxl"
            else set()
        )
        assert {k.removeprefix("lora_unet_").removesuffix(".diff") for k in lost} == want


@pytest.mark.parametrize("only_kv", [True, False])
def test_kohya_merge_scripts_find_our_lora_modules(family_unet, only_kv, tmp_path):
    family, unet = family_unet
    patch, _, sd = _written(unet, family, "lora", tmp_path, only_kv=only_kv)
    name_to_module = readers.kohya_name_to_module(unet, family)
    weights = {n: p.detach() for n, p in unet.named_parameters()}
    skipped = readers.kohya_merge(sd, name_to_module, weights)
    targets = set(name_to_module.values())
    # every module kohya's LoRA covers is found; kohya skips the rest (time / added
    # embeddings), which its networks never train
    assert all(n in targets for n in patch.deltas) == only_kv
    skipped_params = {n for n in patch.deltas if n not in targets}
    assert len(skipped) == len(skipped_params)
    assert all(n.startswith(("time_embedding.", "add_embedding.")) for n in skipped_params)
    expected = _expected(unet, patch)
    for n in patch.deltas:
        if n in targets:
            torch.testing.assert_close(weights[n], expected[n], atol=1e-6, rtol=1e-5, msg=n)

"""Importing other tools' files: kohya (diffusers and LDM/SDXL names), PEFT, .diff, absolute
weights (ESD/UCE style); every misfit refused with the keys and the reason."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from fmn_desktop.errors import PatchFormatError, PatchMismatchError
from fmn_desktop.patch import Delta, Patch, PatchMeta, save_patch
from fmn_desktop.patch.interop import import_patch, ldm_module_map

K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
V = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"


class Model:
    def __init__(self, pipe, fingerprint="base-fp", family="sd1"):
        self.pipe, self.fingerprint, self.family = pipe, fingerprint, family


def _lora(unet, name, rank=2, seed=0):
    w = dict(unet.named_parameters())[name]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(w.shape[0], rank, generator=g) * 0.1, torch.randn(
        rank, w.shape[1], generator=g
    )


def _diff_module_to_ldm(unet):
    return {v: k for k, v in ldm_module_map(unet).items()}


def test_kohya_with_ldm_names_maps_to_diffusers_names(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    to_ldm = _diff_module_to_ldm(unet)
    tensors, want = {}, {}
    for name in (K, V):
        up, down = _lora(unet, name)
        key = "lora_unet_" + to_ldm[name.rpartition(".")[0]].replace(".", "_")
        assert "input_blocks" in key or "output_blocks" in key
        tensors[f"{key}.lora_up.weight"], tensors[f"{key}.lora_down.weight"] = up, down
        tensors[f"{key}.alpha"] = torch.tensor(1.0)
        want[name] = up @ down * 0.5
    path = tmp_path / "sdxl_style.safetensors"
    save_file(tensors, path, metadata={"ss_output_name": "castle_slider"})
    imp = import_patch(path, Model(tiny_pipe), concepts=["castle"])
    assert imp.source_format == "kohya-ldm" and set(imp.patch.deltas) == {K, V}
    for name in (K, V):
        torch.testing.assert_close(imp.patch.deltas[name].to_dense(), want[name])
    meta = imp.patch.meta
    assert meta.base_fingerprint == "base-fp" and meta.method == "import-kohya"
    assert meta.title == "castle_slider"
    assert meta.stats["concept_embeddings"].shape[1] == 32  # ready for fused stacking


def test_kohya_diffusers_names_and_diff_and_peft(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    up, down = _lora(unet, K)
    key = "lora_unet_" + K.rpartition(".")[0].replace(".", "_")
    save_file(
        {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down}, tmp_path / "k.safetensors"
    )
    imp = import_patch(tmp_path / "k.safetensors", Model(tiny_pipe), compute_embeddings=False)
    assert imp.source_format == "kohya"
    torch.testing.assert_close(imp.patch.deltas[K].to_dense(), up @ down)
    dense = torch.randn(dict(unet.named_parameters())[V].shape)
    vkey = "lora_unet_" + V.rpartition(".")[0].replace(".", "_")
    save_file({f"{vkey}.diff": dense}, tmp_path / "d.safetensors")
    imp = import_patch(tmp_path / "d.safetensors", Model(tiny_pipe), kind="correct")
    assert imp.patch.meta.kind == "correct"
    torch.testing.assert_close(imp.patch.deltas[V].dense, dense, rtol=0, atol=0)
    module = K.rpartition(".")[0]
    save_file(
        {f"unet.{module}.lora_A.weight": down, f"unet.{module}.lora_B.weight": up},
        tmp_path / "peft.safetensors",
    )
    imp = import_patch(tmp_path / "peft.safetensors", Model(tiny_pipe))
    assert imp.source_format == "peft"
    torch.testing.assert_close(imp.patch.deltas[K].to_dense(), up @ down)


def test_absolute_weights_become_deltas(tiny_pipe, tmp_path):
    """ESD/UCE ship whole (UNet) state dicts: the delta is file minus base."""
    from fmn_desktop.models.ldm import pipeline_to_ldm

    unet = tiny_pipe.unet
    sd = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    change = torch.randn(sd[K].shape) * 0.01
    sd[K] = sd[K] + change
    save_file({f"unet.{k}": v.contiguous() for k, v in sd.items()}, tmp_path / "uce.safetensors")
    imp = import_patch(tmp_path / "uce.safetensors", Model(tiny_pipe))
    assert imp.source_format == "absolute" and set(imp.patch.deltas) == {K}
    torch.testing.assert_close(imp.patch.deltas[K].dense, change, atol=1e-6, rtol=0)
    # an fp16 copy: tensors equal to the base in fp16 are unchanged, not rounding "deltas"
    save_file({k: v.half().contiguous() for k, v in sd.items()}, tmp_path / "uce16.safetensors")
    imp = import_patch(tmp_path / "uce16.safetensors", Model(tiny_pipe))
    assert set(imp.patch.deltas) == {K}
    # a whole LDM checkpoint (ESD style): UNet changed, VAE/text encoder as the base
    full = {k: v.detach().clone().contiguous() for k, v in pipeline_to_ldm(tiny_pipe).items()}
    ldm_k = "model.diffusion_model." + _diff_module_to_ldm(unet)[K.rpartition(".")[0]] + ".weight"
    full[ldm_k] = full[ldm_k] + change
    save_file(full, tmp_path / "esd.safetensors")
    imp = import_patch(tmp_path / "esd.safetensors", Model(tiny_pipe))
    assert set(imp.patch.deltas) == {K} and any("skipped" in n for n in imp.notes)
    vae_key = next(k for k in full if k.startswith("first_stage_model."))
    full[vae_key] = full[vae_key] + 1.0
    save_file(full, tmp_path / "esd_vae.safetensors")
    with pytest.raises(PatchMismatchError, match="VAE or text encoder.*first_stage_model"):
        import_patch(tmp_path / "esd_vae.safetensors", Model(tiny_pipe))


def test_misfits_are_refused_with_keys_and_reasons(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    model = Model(tiny_pipe)
    up, down = _lora(unet, K)
    key = "lora_unet_" + K.rpartition(".")[0].replace(".", "_")
    cases = {
        "te.safetensors": (
            {
                f"{key}.lora_up.weight": up,
                f"{key}.lora_down.weight": down,
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up.clone(),
            },
            PatchFormatError,
            "text-encoder.*lora_te_text_model",
        ),
        "unknown.safetensors": (
            {
                "lora_unet_no_such_block_attn2_to_k.lora_up.weight": up,
                "lora_unet_no_such_block_attn2_to_k.lora_down.weight": down,
            },
            PatchMismatchError,
            "do not exist in this UNet: lora_unet_no_such",
        ),
        "shape.safetensors": (
            {f"{key}.lora_up.weight": torch.randn(5, 2), f"{key}.lora_down.weight": down},
            PatchMismatchError,
            "attn2.to_k.weight: delta shape",
        ),
        "abs_shape.safetensors": (
            {K: torch.zeros(3, 3)},
            PatchMismatchError,
            "shapes differ.*to_k.weight \\(3, 3\\)",
        ),
        "same.safetensors": (
            {K: dict(unet.named_parameters())[K].detach().clone()},
            PatchMismatchError,
            "equals the loaded base",
        ),
        "alien.safetensors": (
            {"encoder.layer.0.weight": torch.zeros(2)},
            PatchMismatchError,
            "not UNet weights of this model: encoder.layer.0.weight",
        ),
        "nan.safetensors": (
            {f"{key}.lora_up.weight": up * float("nan"), f"{key}.lora_down.weight": down},
            PatchFormatError,
            "NaN",
        ),
        "odd.safetensors": ({"something": torch.zeros(2)}, PatchFormatError, "keys: something"),
    }
    for fname, (tensors, exc, pattern) in cases.items():
        save_file(tensors, tmp_path / fname)
        with pytest.raises(exc, match=pattern):
            import_patch(tmp_path / fname, model)
    imp = import_patch(tmp_path / "te.safetensors", model, unet_only=True)
    assert set(imp.patch.deltas) == {K} and "1 text-encoder tensors dropped" in imp.notes[0]
    save_file({"lora_te1_text_model_x.lora_up.weight": up}, tmp_path / "te_only.safetensors")
    with pytest.raises(PatchFormatError, match="only text-encoder tensors"):
        import_patch(tmp_path / "te_only.safetensors", model)


def test_our_file_for_another_base_and_bad_files(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    p = Patch(
        {K: Delta(dense=torch.randn(dict(unet.named_parameters())[K].shape))},
        PatchMeta(concepts=["castle"], base_fingerprint="other-fp"),
    )
    path = save_patch(p, tmp_path / "ours.safetensors", "diff")
    with pytest.raises(PatchMismatchError, match="made for base model other-fp"):
        import_patch(path, Model(tiny_pipe))
    imp = import_patch(path, Model(tiny_pipe), force=True)
    assert imp.source_format == "fmn" and not imp.original_bytes_ok  # embeddings were added
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PatchFormatError):
        import_patch(cut, Model(tiny_pipe))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(PatchFormatError, match="pickled files are never loaded"):
        import_patch(evil, Model(tiny_pipe))


def test_sdxl_kohya_names_on_an_sdxl_shaped_unet(tmp_path):
    """SDXL layout (3 levels, 2 layers per block, 2 transformer blocks): real kohya key names."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        cross_attention_dim=32,
        attention_head_dim=4,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    want = {
        "input_blocks_4_1_transformer_blocks_0_attn2_to_k": "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        "input_blocks_8_1_transformer_blocks_1_attn2_to_v": "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_v",
        "middle_block_1_transformer_blocks_1_attn2_to_k": "mid_block.attentions.0.transformer_blocks.1.attn2.to_k",
        "output_blocks_2_1_transformer_blocks_0_attn2_to_out_0": "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0",
    }
    params = dict(unet.named_parameters())
    tensors = {}
    for ldm, module in want.items():
        w = params[f"{module}.weight"]
        tensors[f"lora_unet_{ldm}.lora_up.weight"] = torch.ones(w.shape[0], 1)
        tensors[f"lora_unet_{ldm}.lora_down.weight"] = torch.ones(1, w.shape[1])
    save_file(tensors, tmp_path / "sdxl.safetensors")
    model = SimpleNamespace(pipe=SimpleNamespace(unet=unet), fingerprint="xl", family="sdxl")
    imp = import_patch(tmp_path / "sdxl.safetensors", model)
    assert imp.source_format == "kohya-ldm"
    assert set(imp.patch.deltas) == {f"{m}.weight" for m in want.values()}

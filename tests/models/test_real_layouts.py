"""The shipped real configs (SD1.5, SD2.1, SDXL base) against diffusers' own single-file code.

Full-size models are built on the meta device (shapes only, no memory, no weights), exported
to LDM names with our mapping, and handed to diffusers' converters and model-type detection:
they must recognise the family and map every tensor back to the same name and shape.
"""

import json
from types import SimpleNamespace

import pytest

from fmn_desktop.models import config_dir, detect_family_from_keys, pipeline_to_ldm


def _meta_pipeline(family: str, prediction: str | None = None):
    import transformers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = config_dir(family, prediction)

    def text(sub):
        cfg = json.loads((folder / sub / "config.json").read_text())
        cls = getattr(transformers, cfg["architectures"][0])
        return cls(cls.config_class.from_pretrained(str(folder / sub), local_files_only=True))

    with init_empty_weights():
        parts = {
            "unet": UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(str(folder / "unet"))
            ),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae"))),
            "text_encoder": text("text_encoder"),
        }
        if family == "sdxl":
            parts["text_encoder_2"] = text("text_encoder_2")
    return SimpleNamespace(**parts)


def _shapes(sd):
    return {k.removeprefix("text_model."): tuple(v.shape) for k, v in sd.items()}


EXPECTED = {
    # family: (diffusers' model type, a few real LDM tensors with their real shapes)
    "sd1": (
        "v1",
        {
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
            "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
            "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (
                1280,
                768,
            ),
            "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
            "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (
                77,
                768,
            ),
        },
    ),
    "sd2": (
        "v2",
        {
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
            "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (
                320,
                1024,
            ),
            "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
            "cond_stage_model.model.positional_embedding": (77, 1024),
            "cond_stage_model.model.ln_final.weight": (1024,),
        },
    ),
    "sdxl": (
        "xl_base",
        {
            "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (
                640,
                2048,
            ),
            "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_v.weight": (
                1280,
                2048,
            ),
            "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
            "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.bias": (768,),
            "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (
                3840,
                1280,
            ),
            "conditioner.embedders.1.model.text_projection": (1280, 1280),
        },
    ),
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_layout_round_trips_through_diffusers(family):
    from diffusers.loaders import single_file_utils as sfu

    pipe = _meta_pipeline(family)
    ldm = pipeline_to_ldm(pipe, family)
    model_type, known = EXPECTED[family]
    assert detect_family_from_keys(ldm) == family
    assert sfu.infer_diffusers_model_type(ldm) == model_type
    for name, shape in known.items():
        assert tuple(ldm[name].shape) == shape, name

    unet = sfu.convert_ldm_unet_checkpoint(ldm, dict(pipe.unet.config))
    assert _shapes(unet) == _shapes(pipe.unet.state_dict())
    vae = sfu.convert_ldm_vae_checkpoint(ldm, dict(pipe.vae.config))
    assert _shapes(vae) == _shapes(pipe.vae.state_dict())
    if family == "sd2":
        te = sfu.convert_open_clip_checkpoint(pipe.text_encoder, ldm, "cond_stage_model.model.")
    else:
        te = sfu.convert_ldm_clip_checkpoint(ldm)
    assert _shapes(te) == _shapes(pipe.text_encoder.state_dict())
    if family == "sdxl":
        te2 = sfu.convert_open_clip_checkpoint(
            pipe.text_encoder_2, ldm, "conditioner.embedders.1.model."
        )
        assert _shapes(te2) == _shapes(pipe.text_encoder_2.state_dict())


def test_sd2_base_config_is_the_same_architecture():
    v = pipeline_to_ldm(_meta_pipeline("sd2"), "sd2")
    eps = pipeline_to_ldm(_meta_pipeline("sd2", "epsilon"), "sd2")
    assert {k: tuple(t.shape) for k, t in v.items()} == {k: tuple(t.shape) for k, t in eps.items()}


def test_attn2_sizes_for_fingerprint_cost():
    """Documented cost of fingerprint_unet: attn2 values hashed in full per family."""
    sizes = {}
    for family in ("sd1", "sd2", "sdxl"):
        unet = _meta_pipeline(family).unet
        sizes[family] = sum(p.numel() for n, p in unet.named_parameters() if ".attn2." in n)
    assert sizes["sd1"] == 43_962_560  # 88 MB as fp16
    assert sizes["sd2"] == 50_352_320  # 101 MB
    assert sizes["sdxl"] == 545_670_400  # 1.09 GB

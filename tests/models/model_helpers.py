"""Tiny pipelines of each family built from configs in code, shared by the model tests.

Imported by name (not `from conftest import`: several test folders have a conftest).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmn_desktop.models import config_dir, export_single_file, family_tokenizers, save_config_folder

FAMILY_NAMES = ("sd1", "sd2", "sdxl")
PROMPT = "a photo of Elon Musk"


def _clip(hidden: int, act: str, projection: bool = False, proj_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        layer_norm_eps=1e-5,
        hidden_act=act,
        projection_dim=proj_dim,
        max_position_embeddings=77,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=64,
    )


def _scheduler(family: str):
    import json

    import diffusers

    folder = config_dir(family) / "scheduler"
    name = json.loads((folder / "scheduler_config.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(str(folder), local_files_only=True)


def tiny_unet(family: str):
    """The tiny UNet of `family` (random weights from the current torch seed)."""
    from diffusers import UNet2DConditionModel

    if family == "sdxl":
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=8 * 6 + 32,
            cross_attention_dim=32 + 48,
        )
    sd2 = family == "sd2"
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=32,
        down_block_types=(
            ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
            if sd2
            else ("CrossAttnDownBlock2D", "DownBlock2D")
        ),
        up_block_types=(
            ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
            if sd2
            else ("UpBlock2D", "CrossAttnUpBlock2D")
        ),
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
    )


def tiny_pipeline(family: str, seed: int = 0):
    """A randomly initialised tiny pipeline of `family`, deterministic for `seed`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    tokenizers = family_tokenizers(family)
    unet = tiny_unet(family)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            unet=unet,
            vae=_vae(),
            text_encoder=_clip(32, "quick_gelu"),
            text_encoder_2=_clip(48, "gelu", projection=True, proj_dim=32),
            scheduler=_scheduler(family),
            **tokenizers,
        )
    else:
        sd2 = family == "sd2"
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=_vae(),
            text_encoder=_clip(32, "gelu" if sd2 else "quick_gelu"),
            scheduler=_scheduler(family),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **tokenizers,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed: int = 0) -> torch.Tensor:
    """2 steps at 64 px from a fixed seed, as a float tensor."""
    out = pipe(
        PROMPT,
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    )
    return out.images


class Saved:
    """A tiny pipeline saved three ways: diffusers folder, LDM single file, config folder."""

    def __init__(self, family: str, root: Path) -> None:
        self.family = family
        self.pipe = tiny_pipeline(family)
        self.folder = root / f"{family}_diffusers"
        self.pipe.save_pretrained(str(self.folder), safe_serialization=True)
        self.file = export_single_file(self.pipe, root / f"{family}.safetensors")
        self.config = save_config_folder(self.pipe, root / f"{family}_config")
        self._image: torch.Tensor | None = None

    @property
    def image(self) -> torch.Tensor:
        if self._image is None:
            self._image = generate(self.pipe)
        return self._image

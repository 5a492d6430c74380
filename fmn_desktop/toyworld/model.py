"""Architectures of the embedded model: SD-layout pieces sized for a CPU, plus helper nets.

- `AutoencoderKL`: 32x32x3 <-> 16x16x4 (one downsampling, SD's 4 latent channels).
- `UNet2DConditionModel`: 16x16x4 latents; blocks at 16x16 (conv only), 8x8 and 4x4 with
  cross-attention, and a cross-attention mid block at 4x4 (attention at 16x16 costs 2.5x per
  step on CPU).
- `CLIPTextModel`: real CLIP vocabulary (49,408 rows), 77 positions, a 4-layer causal
  transformer, end-of-text as the pad token as in SD1.
- `ImageTower`: the image side of the contrastive (CLIP-style) training of the text encoder;
  not shipped.
- `JudgeNet`: a small CNN with one head per attribute of `world.HEADS`.

Each `*_config` returns a plain dict so tests can shrink a config by overriding keys.
"""

from __future__ import annotations

import torch
from torch import nn

from fmn_desktop.toyworld.world import HEADS

VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS_ID = 49406
EOS_ID = 49407


def text_config(**over) -> dict:
    cfg = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=64,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    cfg.update(over)
    return cfg


def vae_config(**over) -> dict:
    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
        mid_block_add_attention=False,
    )
    cfg.update(over)
    return cfg


def unet_config(cross_attention_dim: int = 64, **over) -> dict:
    cfg = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(48, 96, 96),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=3,
        norm_num_groups=16,
    )
    cfg.update(over)
    return cfg


def build_text_encoder(cfg: dict):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**cfg))


def build_vae(cfg: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg)


def build_unet(cfg: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg)


def _conv_stack(widths: tuple[int, ...]) -> nn.Sequential:
    """3x3 convs: full resolution, then (stride 2, same-width) pairs; global average pool."""

    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1), nn.GroupNorm(8, o), nn.SiLU()]

    layers = blk(3, widths[0], 1)
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += blk(a, b, 2) + blk(b, b, 1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ImageTower(nn.Module):
    """CNN image encoder for the contrastive training of the text encoder (32x32 -> dim)."""

    def __init__(self, dim: int = 64, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.body = _conv_stack(widths)
        self.proj = nn.Linear(widths[-1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x * 2 - 1))


class JudgeNet(nn.Module):
    """Multi-head CNN classifier: input float (N, 3, H, W) in [0, 1], logits per head."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 128)):
        super().__init__()
        self.widths = tuple(widths)
        self.body = _conv_stack(self.widths)
        self.heads = nn.ModuleDict({h: nn.Linear(widths[-1], len(v)) for h, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x * 2 - 1)
        return {h: head(f) for h, head in self.heads.items()}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

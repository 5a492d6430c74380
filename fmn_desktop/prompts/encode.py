"""Text conditioning for SD1/SD2 and SDXL pipelines: prompt embeddings and SDXL's added
conditioning."""

from __future__ import annotations

import torch


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> tuple[torch.Tensor, dict | None]:
    """Prompt embeddings (B, 77, C) and, for SDXL, the added conditioning (pooled, time ids)."""
    device = pipe.unet.device
    if not is_sdxl(pipe):
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return embeds.to(pipe.unet.dtype), None
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, device=device, do_classifier_free_guidance=False
    )
    size = pipe.default_sample_size * pipe.vae_scale_factor
    proj_dim = pipe.text_encoder_2.config.projection_dim
    time_ids = pipe._get_add_time_ids(
        (size, size), (0, 0), (size, size), dtype=embeds.dtype, text_encoder_projection_dim=proj_dim
    )
    added = {"text_embeds": pooled, "time_ids": time_ids.to(device).repeat(len(prompts), 1)}
    return embeds.to(pipe.unet.dtype), added

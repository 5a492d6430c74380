"""Measure cross-attention directly: the concept's attention mass and how much maps move.

The concept's attention mass of a prompt is the re-steering quantity itself: the sum over
every attn2 layer, head, pixel and concept column of the squared attention probability, on
fixed noised latents and timesteps so before/after compare like with like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.prompts.tokens import concept_mask
from fmn_desktop.resteer.processor import ResteerState, resteer_hooks


def probe_inputs(pipe, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed noisy latents and timesteps for comparable measurements."""
    g = torch.Generator("cpu").manual_seed(seed)
    unet = pipe.unet
    size = unet.config.sample_size
    x = torch.randn(n, unet.config.in_channels, size, size, generator=g)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (n,), generator=g)
    return x.to(unet.device, unet.dtype), t.to(unet.device)


@torch.no_grad()
def attention_mass(
    pipe, prompts: list[str], concepts: list[str], positions: str = "concept", seed: int = 0
) -> torch.Tensor:
    """(B,) attention mass of `concepts[b]` in `prompts[b]` (see module docstring)."""
    mask = concept_mask(pipe.tokenizer, prompts, concepts, positions)
    embeds, added = encode_prompts(pipe, prompts)
    x, t = probe_inputs(pipe, len(prompts), seed)
    state = ResteerState(mask=mask.to(pipe.unet.device))
    with resteer_hooks(pipe.unet, state):
        pipe.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added)
    return state.resteer_per_sample().float().cpu()


@torch.no_grad()
def attention_maps(pipe, prompts: list[str], seed: int = 0) -> list[torch.Tensor]:
    """Every attn2 layer's probabilities (B, heads, HW, 77) for `prompts` on fixed inputs."""
    maps: list[torch.Tensor] = []

    def record(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        enc = kwargs.get("encoder_hidden_states")
        q = module.to_q(hidden if hidden.ndim == 3 else hidden.flatten(2).transpose(1, 2))
        k = module.to_k(enc)
        b, h = q.shape[0], module.heads
        q = q.view(b, -1, h, q.shape[-1] // h).transpose(1, 2)
        k = k.view(b, -1, h, k.shape[-1] // h).transpose(1, 2)
        maps.append(F.softmax(q @ k.transpose(-1, -2) * module.scale, dim=-1).float().cpu())

    handles = [
        m.register_forward_hook(record, with_kwargs=True)
        for name, m in pipe.unet.named_modules()
        if name.endswith("attn2")
    ]
    try:
        embeds, added = encode_prompts(pipe, prompts)
        x, t = probe_inputs(pipe, len(prompts), seed)
        pipe.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def maps_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Relative L2 change of all attention maps: ||after - before|| / ||before||."""
    num = sum(float((a - b).square().sum()) for a, b in zip(after, before))
    den = sum(float(b.square().sum()) for b in before)
    return (num / den) ** 0.5

"""Fast forget mode: per-layer optimisation of attn2 K on cached queries, no UNet backward.

One forward pass of the UNet over the noised reference latents (and the same latents with
the preserve prompts) records every cross-attention layer's queries. Each layer's `to_k` then
gets its own small optimisation: the re-steering term of the concept prompts on those cached
queries, plus the preservation term (the layer's output, or maps, on the preserve prompts with
the original values), computed by the fused kernel where it runs; with an anchor weight, also
the anchor term on the concept rows (see ForgetConfig), with V fixed. A forget then costs about
one UNet forward per cached sample plus cheap per-layer steps.

What it ignores: a change in layer l alters the inputs of later layers, so their cached
queries go slightly stale (first order only). Every layer is optimised on its own loss, so
the 64x64 layers cannot dominate the 8x8 ones as they do in the paper's summed norm.

V's role: a layer's values cannot change its own attention probabilities, and in this mode
nothing downstream is modelled, so `to_v` is left untouched (the faithful mode trains it,
where it acts through later layers). The patch holds `to_k` deltas only.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from fmn_desktop.errors import TrainingError
from fmn_desktop.patch.format import Delta
from fmn_desktop.resteer.processor import (
    _merge_heads,
    _probs,
    _split_heads,
    attn2_inputs,
    attn2_output,
    cross_attention_modules,
    relative_mse,
)
from fmn_desktop.resteer.trainable import DenseDelta, LoraDelta, protect_projector
from fmn_desktop.training.loop import Optimiser
from fmn_kernels import resteer_attention


class _QueryRecorder:
    """attn2 processor that stores each call's queries and otherwise attends as usual."""

    def __init__(self, store: list):
        self.store = store

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        residual = hidden_states
        hidden_states, enc, shape = attn2_inputs(attn, hidden_states, encoder_hidden_states, temb)
        q = _split_heads(attn.to_q(hidden_states), attn.heads)
        k = _split_heads(attn.to_k(enc), attn.heads)
        v = _split_heads(attn.to_v(enc), attn.heads)
        self.store.append(q.detach())
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = attn.to_out[1](attn.to_out[0](_merge_heads(out)))
        return attn2_output(attn, out, residual, shape)


@torch.no_grad()
def cache_queries(unet, noisy, t, embeds, added) -> dict[str, torch.Tensor]:
    """Each attn2 layer's queries (B, heads, M, d) for one batch, by layer path."""
    mods = cross_attention_modules(unet)
    previous = unet.attn_processors
    stores = {name: [] for name in mods}
    procs = {f"{name}.processor": _QueryRecorder(stores[name]) for name in mods}
    unet.set_attn_processor({k: procs.get(k, v) for k, v in previous.items()})
    try:
        unet(noisy, t, encoder_hidden_states=embeds, added_cond_kwargs=added)
    finally:
        unet.set_attn_processor(previous)
    missing = [n for n, s in stores.items() if len(s) != 1]
    if missing:
        raise TrainingError(f"query capture missed {len(missing)} cross-attention layers")
    return {n: s[0] for n, s in stores.items()}


@dataclass
class _Batch:
    """What every layer's optimisation reads: the cached batch's text embeddings (concept,
    preserve and anchor prompts; None where the term is off), mask and queries by layer."""

    emb_c: torch.Tensor
    mask: torch.Tensor
    q_c: dict[str, torch.Tensor]
    emb_r: torch.Tensor | None
    q_r: dict[str, torch.Tensor] | None
    emb_a: torch.Tensor | None
    projector: torch.Tensor | None


def fast_steps(pipe, config, inputs, gen: torch.Generator) -> Generator:
    """Yields Progress per (layer, step), the layer as its text; returns {param name: Delta}
    for every to_k, and the history."""
    from fmn_desktop.resteer.sampling import select_rows, timesteps

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    n = max(config.num_references, config.batch_size)
    idx, pick = inputs.sample(n, gen)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    x0 = inputs.latents[idx].to(device, dtype)
    t = timesteps(sched, n, gen).to(device)
    noisy = sched.add_noise(x0, torch.randn(x0.shape, generator=gen).to(device, dtype), t)
    emb_c = inputs.embeds[pick.to(inputs.embeds.device)]
    mask = inputs.mask[pick].to(device)
    q_c = cache_queries(unet, noisy, t, emb_c, select_rows(inputs.added, pick))
    emb_r = q_r = emb_a = projector = None
    if config.preserve_weight > 0 and inputs.preserve_embeds is not None:
        rpick = inputs.sample_preserve(n, gen)
        emb_r = inputs.preserve_embeds[rpick.to(inputs.preserve_embeds.device)]
        q_r = cache_queries(unet, noisy, t, emb_r, select_rows(inputs.preserve_added, rpick))
    if config.anchor_weight > 0 and inputs.anchor_embeds is not None:
        emb_a = inputs.anchor_embeds[pick.to(inputs.anchor_embeds.device)]
    if config.protect_energy > 0 and inputs.preserve_embeds is not None:
        projector = protect_projector(inputs.preserve_embeds, config.protect_energy).to(device)
    batch = _Batch(emb_c, mask, q_c, emb_r, q_r, emb_a, projector)

    mods = cross_attention_modules(unet)
    total = len(mods) * config.steps
    exported: dict[str, Delta] = {}
    history = []
    for name, attn in mods.items():
        delta, loss_fn = _layer_loss(config, name, attn, batch, device, dtype)
        opt = Optimiser(
            delta.parameters(),
            config.effective_lr(),
            config.weight_decay,
            config.grad_clip,
            "no patch was written",
            loss_scale=dtype == torch.float16,
        )
        history += yield from opt.run(
            loss_fn, config.steps, start=len(history), total=total, text=name
        )
        exported[f"{name}.to_k.weight"] = delta.export()
    return exported, history


def _layer_loss(config, name: str, attn, batch: _Batch, device, dtype):
    """A fresh delta on `attn`'s to_k, and the loss of the layer's terms on the cached
    queries as a function of it."""
    w0 = attn.to_k.weight.detach()
    heads, scale = attn.heads, attn.scale
    backend = _cpu_reference(config.backend, device)
    q_c, emb_c = batch.q_c[name], batch.emb_c
    enc_c = attn.norm_encoder_hidden_states(emb_c) if attn.norm_cross else emb_c
    with torch.no_grad():
        v_c = _split_heads(attn.to_v(enc_c), heads)
    if batch.emb_r is not None:
        q_r = batch.q_r[name]
        enc_r = attn.norm_encoder_hidden_states(batch.emb_r) if attn.norm_cross else batch.emb_r
        with torch.no_grad():
            k_r0 = _split_heads(F.linear(enc_r, w0), heads)
            v_r = _split_heads(attn.to_v(enc_r), heads)
            if config.preserve_mode == "maps":
                ref_r = _probs(q_r, k_r0, scale)
            else:
                ref_r = F.scaled_dot_product_attention(q_r, k_r0, v_r, scale=scale)
    if batch.emb_a is not None:
        # The anchor target on the cached queries (attention outputs before to_out, which
        # is fixed here): anchor - g (concept - anchor), both with the original weights.
        enc_a = attn.norm_encoder_hidden_states(batch.emb_a) if attn.norm_cross else batch.emb_a
        with torch.no_grad():
            k_a0 = _split_heads(F.linear(enc_a, w0), heads)
            v_a = _split_heads(attn.to_v(enc_a), heads)
            target = F.scaled_dot_product_attention(q_c, k_a0, v_a, scale=scale)
            if config.anchor_guidance:
                k_c0 = _split_heads(F.linear(enc_c, w0), heads)
                own = F.scaled_dot_product_attention(q_c, k_c0, v_c, scale=scale)
                target = target - config.anchor_guidance * (own - target)
            target = target.float()
    delta = (
        LoraDelta(w0, config.lora_rank, None, batch.projector)
        if config.lora_rank
        else DenseDelta(w0, batch.projector)
    ).to(device)
    forget0 = None

    def loss_fn():
        nonlocal forget0
        w = delta(w0.float()).to(dtype)
        k_c = _split_heads(F.linear(enc_c, w), heads)
        out_c, term = resteer_attention(q_c, k_c, v_c, batch.mask, scale=scale, backend=backend)
        raw = term.sum(1).mean().clamp_min(1e-20).sqrt()
        if forget0 is None:
            forget0 = raw.detach().clamp_min(1e-12)
        loss = config.resteer_weight * raw / forget0
        if batch.emb_a is not None:
            loss = loss + config.anchor_weight * relative_mse(out_c.float(), target)
        preserve = None
        if batch.emb_r is not None:
            k_r = _split_heads(F.linear(enc_r, w), heads)
            if config.preserve_mode == "maps":
                cur = _probs(q_r, k_r, scale)
            else:
                cur, _ = resteer_attention(q_r, k_r, v_r, None, scale=scale, backend=backend)
            preserve = (cur.float() - ref_r.float()).pow(2).mean() / ref_r.float().pow(2).mean()
            loss = loss + config.preserve_weight * preserve
        return loss, {"forget": raw, "preserve": preserve}

    return delta, loss_fn


def _cpu_reference(requested: str | None, device: torch.device) -> str | None:
    from fmn_desktop.resteer.processor import _backend_for

    return _backend_for(torch.empty(0, device=device), requested)

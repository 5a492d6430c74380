"""Broad removal of an attribute drawn under several words, or under none (ESD-style).

A word-level edit cannot reach an attribute that no token of the prompt names (the toy world's
hazard frame, drawn under "cursed", "toxic", "hexed" and sometimes uncaptioned), so this fine-
tunes attn2 weights (dense deltas, saved as a ``correct`` patch) with negative guidance.

Definitions. References x0: latents the base model draws from prompts with the training words
(so they show the attribute). Each step noises them (DDPM ``add_noise``, t ~ U{0..T-1}); for a
reference's prompt c_u (with a word) and its counterpart c_s (the same prompt with the word
removed), the frozen base model gives eps_u = eps(x_t, c_u), eps_s = eps(x_t, c_s), and the
target of both prompts is

    eps* = eps_s - eta * (eps_u - eps_s)

(ESD's negative guidance, with the word-less prompt as the anchor instead of the empty one).
Training c_u towards eps* removes the attribute under the word; training c_s towards it (weight
`uncaptioned_weight`) pushes plain prompts away from the attribute too, which is what reaches
the uncaptioned case and words never trained on, if anything does. Preservation: ordinary
prompts (none naming a word), and the empty prompt that classifier-free guidance measures
every prompt against, keep the base model's prediction (weight `preserve_weight`), both on the
same noised references and on latents the base model draws from the ordinary prompts
themselves (`ordinary_references`): held only where the attribute is, the patch drew it on
word-free prompts elsewhere. Loss: mean squared error of each term. AdamW on the deltas.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field

import torch
from diffusers import DDPMScheduler

from fmn_desktop.correct.config import (  # noqa: F401  (re-exported)
    DEFAULT_BROAD_TEMPLATES,
    BroadConfig,
    strip_word,
)
from fmn_desktop.patch.format import Patch, PatchMeta
from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.resteer.encode import generate_latents
from fmn_desktop.resteer.trainable import TrainableDeltas, target_parameters
from fmn_desktop.training import Progress, run_to_end
from fmn_desktop.training.loop import Optimiser


@dataclass
class BroadResult:
    patch: Patch
    history: list[Progress] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def base_weights(deltas: TrainableDeltas):
    """Run the UNet with its deltas bypassed (the frozen base model)."""
    for d in deltas.deltas.values():
        d.forward = _identity
    try:
        yield
    finally:
        for d in deltas.deltas.values():
            del d.forward


def _identity(base: torch.Tensor) -> torch.Tensor:
    return base


def draw_latents(
    pipe, prompts: list[str], n: int, config: BroadConfig, first_seed: int, cache=None
) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor]]:
    """`n` latents the base model draws, the i-th from prompts[i mod len] at seed first_seed +
    i (yielding their progress); returns them (on the UNet's device) and each one's prompt
    index. `cache` as for the forget job's references."""
    draws = [(prompts[i % len(prompts)], first_seed + i) for i in range(n)]
    lat = yield from generate_latents(
        pipe, draws, config.reference_steps, config.guidance_scale, cache
    )
    return lat.to(pipe.unet.device), torch.arange(n) % len(prompts)


def broad_steps(
    pipe, config: BroadConfig, fingerprint: str = "", family: str = "sd1", cache=None
) -> Generator[Progress, None, BroadResult]:
    started = time.perf_counter()
    unet = pipe.unet
    device = unet.device
    gen = torch.Generator("cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    pairs = config.prompt_pairs()
    preserve = [
        p
        for p in (config.preserve_prompts or [])
        if not any(strip_word(p, w) != p for w in config.words)
    ]
    with torch.no_grad():
        unsafe_emb, _ = encode_prompts(pipe, [u for u, _ in pairs])
        safe_emb, _ = encode_prompts(pipe, [s for _, s in pairs])
        preserve_emb = encode_prompts(pipe, preserve)[0] if preserve else None
        empty_emb = encode_prompts(pipe, [""])[0] if config.hold_unconditional else None
    latents, owner_t = yield from draw_latents(
        pipe, [u for u, _ in pairs], config.num_references, config, config.seed * 100003, cache
    )
    ordinary = ordinary_owner = None
    if preserve and config.ordinary_references:
        ordinary, ordinary_owner = yield from draw_latents(
            pipe, preserve, config.ordinary_references, config, config.seed * 100003 + 50021, cache
        )
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    names = target_parameters(unet, config.trainable, False)
    names = [n for n in names if n.endswith(".weight")] or names
    was_training = unet.training
    unet.eval()
    deltas = TrainableDeltas(unet, names)

    def loss_fn():
        b = config.batch_size
        idx = torch.randint(0, len(latents), (b,), generator=gen)
        x0 = latents[idx.to(device)].to(unet.dtype)
        noise = torch.randn(x0.shape, generator=gen).to(device, x0.dtype)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(device)
        xt = sched.add_noise(x0, noise, t)
        k = owner_t[idx]
        cu, cs = unsafe_emb[k.to(unsafe_emb.device)], safe_emb[k.to(safe_emb.device)]
        rows = [cu, cs]
        if preserve_emb is not None:
            r = torch.randint(0, len(preserve_emb), (b,), generator=gen)
            rows.append(preserve_emb[r.to(preserve_emb.device)])
        if empty_emb is not None:
            rows.append(empty_emb.expand(b, -1, -1))
        n = len(rows)
        x_all, t_all, c_all = xt.repeat(n, 1, 1, 1), t.repeat(n), torch.cat(rows)
        if ordinary is not None:
            # Ordinary latents: their own caption and "" (when held) keep the base.
            j = torch.randint(0, len(ordinary), (b,), generator=gen)
            o0 = ordinary[j.to(device)].to(unet.dtype)
            o_noise = torch.randn(o0.shape, generator=gen).to(device, o0.dtype)
            ot = sched.add_noise(o0, o_noise, t)
            o_rows = [preserve_emb[ordinary_owner[j].to(preserve_emb.device)]]
            if empty_emb is not None:
                o_rows.append(empty_emb.expand(b, -1, -1))
            x_all = torch.cat([x_all, ot.repeat(len(o_rows), 1, 1, 1)])
            t_all = torch.cat([t_all, t.repeat(len(o_rows))])
            c_all = torch.cat([c_all, *o_rows])
            n += len(o_rows)
        with torch.no_grad(), base_weights(deltas):
            base = unet(x_all, t_all, encoder_hidden_states=c_all).sample.float()
        eps_u, eps_s = base[:b], base[b : 2 * b]
        target = eps_s - config.eta * (eps_u - eps_s)
        pred = unet(x_all, t_all, encoder_hidden_states=c_all).sample.float()
        loss = ((pred[:b] - target) ** 2).mean()
        if config.uncaptioned_weight:
            loss = loss + config.uncaptioned_weight * ((pred[b : 2 * b] - target) ** 2).mean()
        if n > 2 and config.preserve_weight:
            # Captions and/or "" (rows 2b onwards) keep their base predictions.
            loss = loss + config.preserve_weight * ((pred[2 * b :] - base[2 * b :]) ** 2).mean()
        return loss

    try:
        opt = Optimiser(
            deltas.parameters(),
            config.lr,
            0.0,
            config.grad_clip,
            "no patch was written",
            loss_scale=unet.dtype == torch.float16,
        )
        history = yield from opt.run(loss_fn, config.steps)
        exported = deltas.export()
    finally:
        deltas.remove()
        unet.train(was_training)
    hyper = {k: v for k, v in asdict(config).items() if k != "preserve_prompts"}
    meta = PatchMeta(
        concepts=list(config.words),
        kind="correct",
        method="esd-broad",
        family=family,
        base_fingerprint=fingerprint,
        hyperparameters=hyper,
    )
    return BroadResult(Patch(exported, meta), history, time.perf_counter() - started)


def erase_broad(
    pipe,
    config: BroadConfig,
    fingerprint: str = "",
    family: str = "sd1",
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache=None,
) -> BroadResult:
    """Run `broad_steps` to the end; `should_cancel()` returning True raises CancelledError."""
    return run_to_end(
        broad_steps(pipe, config, fingerprint, family, cache),
        progress,
        should_cancel,
        "broad removal cancelled; no patch was written",
    )

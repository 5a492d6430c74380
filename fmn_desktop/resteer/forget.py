"""A forget job: attention re-steering from a concept's name to a patch.

Faithful to Forget-Me-Not (drive the concept tokens' cross-attention probabilities towards
zero on noised reference latents of the concept; AdamW; the denoising loss plays no part), with
the public code's defects fixed (per-(batch, head) masks, clipping that clips, first
end-of-text token only, hooks that fail loudly, latent scale from the VAE config) and two
additions the measurements call for: which positions are re-steered, and a preservation term
holding other prompts' attn2 outputs in place.

`forget_steps` is a generator yielding `Progress` each step and returning a `ForgetResult`;
`forget` runs it with an optional progress callback and cancel check.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field

import torch
from diffusers import DDPMScheduler

from fmn_desktop.errors import TrainingError
from fmn_desktop.patch.format import Patch, PatchMeta
from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.prompts.templates import prompts_for
from fmn_desktop.prompts.tokens import concept_mask
from fmn_desktop.resteer.config import (  # noqa: F401  (re-exported: the names' old home)
    DEFAULT_PRESERVE_PROMPTS,
    FAITHFUL_STEPS,
    FAST_STEPS,
    MODE_DEFAULTS,
    ForgetConfig,
    default_lr,
)
from fmn_desktop.resteer.encode import reference_latents
from fmn_desktop.resteer.processor import (
    ResteerState,
    check_hooks_ran,
    cross_attention_modules,
    resteer_hooks,
)
from fmn_desktop.resteer.sampling import concat_rows, select_rows, timesteps
from fmn_desktop.resteer.trainable import TrainableDeltas, protect_projector, target_parameters
from fmn_desktop.training import Progress, run_to_end
from fmn_desktop.training.loop import Optimiser


@dataclass
class ForgetResult:
    patch: Patch
    history: list[Progress] = field(default_factory=list)  # terms: "forget", "preserve"
    seconds: float = 0.0


@dataclass
class JobInputs:
    """What both modes train on: prompts, masks, embeddings, reference latents, preserve set."""

    prompts: list[str]
    owners: list[str]  # the concept each prompt names
    mask: torch.Tensor  # (P, L) positions to re-steer
    embeds: torch.Tensor  # (P, L, C)
    added: dict | None  # SDXL's added conditioning
    latents: torch.Tensor  # (N, 4, h, w) reference latents
    latent_prompt: torch.Tensor | None  # prompt index each latent came from (None: any)
    preserve_prompts: list[str]
    preserve_embeds: torch.Tensor | None
    preserve_added: dict | None
    anchor_embeds: torch.Tensor | None = None  # (P, L, C): each prompt with its anchor

    def sample(self, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent indices, prompt indices) for a batch: each latent with a prompt of its concept."""
        idx = torch.randint(0, len(self.latents), (b,), generator=gen)
        return idx, _prompts_for_latents(idx, self.latent_prompt, self.owners, gen)

    def sample_preserve(self, b: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.preserve_prompts), (b,), generator=gen)


def prepare_inputs(
    pipe, config: ForgetConfig, gen: torch.Generator, cache=None
) -> Generator[Progress, None, JobInputs]:
    """The job's inputs; yields the reference images' progress (see `reference_latents`)."""
    prompts, owners = [], []
    for concept in config.concepts:
        for prompt in prompts_for(concept, config.concept_kind, config.templates):
            prompts.append(prompt)
            owners.append(concept)
    mask = concept_mask(pipe.tokenizer, prompts, owners, config.positions)
    embeds, added = encode_prompts(pipe, prompts)
    # Generated latent i comes from prompt order[i mod P], the concepts taken in turn so that
    # each has references even when there are fewer references than prompts (a hardened job
    # has dozens of aliases); a folder's images fit any prompt.
    order = reference_order(owners)
    latents = yield from reference_latents(
        pipe, [prompts[j] for j in order], config, generator=gen, cache=cache
    )
    latent_prompt = None
    if not config.reference_dir:
        latent_prompt = torch.tensor(order)[torch.arange(len(latents)) % len(prompts)]
    preserve_prompts = [
        p
        for p in (config.preserve_prompts or DEFAULT_PRESERVE_PROMPTS)
        if not any(c.lower() in p.lower() for c in config.concepts)
    ]
    preserve_embeds = preserve_added = None
    if preserve_prompts:
        preserve_embeds, preserve_added = encode_prompts(pipe, preserve_prompts)
    anchor_embeds = None
    if config.anchor_weight > 0:
        anchors = [anchor_prompt(p, c, config.anchor) for p, c in zip(prompts, owners)]
        anchor_embeds = encode_prompts(pipe, anchors)[0]
    return JobInputs(
        prompts,
        owners,
        mask,
        embeds,
        added,
        latents,
        latent_prompt,
        preserve_prompts,
        preserve_embeds,
        preserve_added,
        anchor_embeds,
    )


def reference_order(owners: list[str]) -> list[int]:
    """Prompt indices with the concepts in turn (first prompt of each concept, then the second
    of each, ...); for one concept, the prompts in order."""
    groups: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        groups.setdefault(owner, []).append(i)
    width = max(len(g) for g in groups.values())
    return [g[k] for k in range(width) for g in groups.values() if k < len(g)]


def anchor_prompt(prompt: str, concept: str, anchor: str) -> str:
    """`prompt` with `concept` replaced by `anchor` (case-insensitive; "" drops it and, for
    a dropped word, a dangling article), spaces tidied."""
    out = re.sub(re.escape(concept), anchor, prompt, flags=re.IGNORECASE)
    if not anchor.strip():
        out = re.sub(r"\b(a|an|the)\s+(?=(in|of|with|on)\b|$)", "", out.strip())
    return " ".join(out.split())


def changed_parameters(unet, config: ForgetConfig) -> list[str]:
    """The UNet parameters a forget job with `config` changes (known before it runs): the
    fast mode trains every attn2 `to_k`, the faithful mode the trainable set."""
    if config.mode == "fast":
        return [n for n, _ in unet.named_parameters() if n.endswith(".attn2.to_k.weight")]
    return target_parameters(unet, config.trainable, bool(config.lora_rank))


def forget_steps(
    pipe, config: ForgetConfig, fingerprint: str = "", family: str = "sd1", cache=None
) -> Generator[Progress, None, ForgetResult]:
    """Run a forget job on `pipe` (left unchanged), yielding progress ("references" per image
    drawn, then "train" per step); returns the patch. `cache` (a `refcache.ReferenceCache`)
    keeps the reference latents for later jobs: the patch is the same with or without it."""
    started = time.perf_counter()
    gen = torch.Generator("cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    inputs = yield from prepare_inputs(pipe, config, gen, cache)
    if config.mode == "fast":
        from fmn_desktop.resteer.fast import fast_steps

        exported, history = yield from fast_steps(pipe, config, inputs, gen)
    else:
        exported, history = yield from _faithful_steps(pipe, config, inputs, gen)
    hyper = {k: v for k, v in asdict(config).items() if k not in ("concepts", "backend")}
    hyper["lr"] = config.effective_lr()
    # The text embeddings at the re-steered positions: what closed-form stacking needs.
    mask = inputs.mask.to(inputs.embeds.device) > 0
    stats = {"concept_embeddings": inputs.embeds[mask].detach().to(torch.float16).cpu()}
    meta = PatchMeta(
        concepts=list(config.concepts),
        kind="forget",
        method="resteer" if config.mode == "faithful" else "resteer-fast",
        family=family,
        base_fingerprint=fingerprint,
        hyperparameters=hyper,
        stats=stats,
    )
    return ForgetResult(Patch(exported, meta), history, time.perf_counter() - started)


def _faithful_steps(pipe, config: ForgetConfig, inputs: JobInputs, gen: torch.Generator):
    """Attention re-steering through the whole UNet (the paper's method); yields progress,
    returns the exported deltas and the history."""
    unet = pipe.unet
    device = unet.device
    use_preserve = config.preserve_weight > 0 and inputs.preserve_embeds is not None
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    names = target_parameters(unet, config.trainable, bool(config.lora_rank))
    if not names:
        raise TrainingError(f"trainable set {config.trainable!r} selects no parameter of this UNet")
    was_training = unet.training
    unet.eval()
    projector = None
    if config.protect_energy > 0:
        projector = protect_projector(
            inputs.preserve_embeds
            if inputs.preserve_embeds is not None
            else encode_prompts(pipe, DEFAULT_PRESERVE_PROMPTS)[0],
            config.protect_energy,
        )
    deltas = TrainableDeltas(unet, names, config.lora_rank, projector=projector)
    state = ResteerState(
        layer_weighting=config.layer_weighting,
        preserve_mode=config.preserve_mode,
        backend=config.backend,
        term=config.term,
        anchor_guidance=config.anchor_guidance,
    )
    n_layers = len(cross_attention_modules(unet))
    forget0 = None

    def loss_fn():
        nonlocal forget0
        b = config.batch_size
        idx, pick = inputs.sample(b, gen)
        x0 = inputs.latents[idx].to(device, unet.dtype)
        noise = torch.randn(x0.shape, generator=gen).to(device, x0.dtype)
        t = timesteps(noise_sched, b, gen).to(device)
        noisy = noise_sched.add_noise(x0, noise, t)
        emb = inputs.embeds[pick.to(inputs.embeds.device)]
        mask = inputs.mask[pick]
        cond = select_rows(inputs.added, pick)
        if use_preserve:
            rpick = inputs.sample_preserve(b, gen)
            noisy = torch.cat([noisy, noisy])
            t = torch.cat([t, t])
            remb = inputs.preserve_embeds
            emb = torch.cat([emb, remb[rpick.to(remb.device)]])
            mask = torch.cat([mask, torch.zeros_like(mask)])
            cond = concat_rows(cond, select_rows(inputs.preserve_added, rpick))
            state.preserve_rows = torch.arange(2 * b, device=device) >= b
        state.mask = mask
        if inputs.anchor_embeds is not None:
            state.anchor_states = inputs.anchor_embeds[pick.to(inputs.embeds.device)]
        state.reset()
        unet(noisy, t, encoder_hidden_states=emb, added_cond_kwargs=cond)
        check_hooks_ran(unet, state, n_layers)
        # The paper's loss: the L2 norm of all selected probabilities (mean over samples).
        raw = state.resteer_per_sample()[:b].mean().clamp_min(1e-20).sqrt()
        if forget0 is None:
            forget0 = raw.detach().clamp_min(1e-12)
        # Adam is invariant to the loss scale, so normalising only fixes the balance with the
        # (scale-free) preservation term.
        loss = config.resteer_weight * raw / forget0
        preserve = state.preserve_error()
        if preserve is not None:
            loss = loss + config.preserve_weight * preserve
        anchor = state.anchor_error()
        if anchor is not None:
            loss = loss + config.anchor_weight * anchor
        return loss, {"forget": raw, "preserve": preserve}

    try:
        opt = Optimiser(
            deltas.parameters(),
            config.effective_lr(),
            config.weight_decay,
            config.grad_clip,
            "no patch was written",
            loss_scale=unet.dtype == torch.float16,
        )
        with resteer_hooks(unet, state):
            history = yield from opt.run(loss_fn, config.steps)
        exported = deltas.export()
    finally:
        deltas.remove()
        unet.train(was_training)
    return exported, history


def forget(
    pipe,
    config: ForgetConfig,
    fingerprint: str = "",
    family: str = "sd1",
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache=None,
) -> ForgetResult:
    """Run `forget_steps` to the end; `should_cancel()` returning True stops it (CancelledError)."""
    return run_to_end(
        forget_steps(pipe, config, fingerprint, family, cache),
        progress,
        should_cancel,
        "forget job cancelled; no patch was written",
    )


def _prompts_for_latents(
    idx: torch.Tensor, latent_prompt: torch.Tensor | None, owners: list[str], gen: torch.Generator
) -> torch.Tensor:
    """A prompt for each picked latent: any prompt naming the concept the latent shows."""
    n = len(owners)
    if latent_prompt is None:
        return torch.randint(0, n, (len(idx),), generator=gen)
    picks = []
    for i in idx.tolist():
        same = [j for j in range(n) if owners[j] == owners[int(latent_prompt[i])]]
        picks.append(same[int(torch.randint(0, len(same), (1,), generator=gen))])
    return torch.tensor(picks)

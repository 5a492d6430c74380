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
from dataclasses import MISSING, asdict, dataclass, field

import torch
from diffusers import DDPMScheduler

from fmn_desktop.errors import TrainingError
from fmn_desktop.knobs import knob, resolve_by_mode
from fmn_desktop.patch.format import Patch, PatchMeta
from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.prompts.templates import KINDS, prompts_for
from fmn_desktop.prompts.tokens import POSITION_MODES, concept_mask
from fmn_desktop.resteer.encode import reference_latents
from fmn_desktop.resteer.processor import (
    LAYER_WEIGHTINGS,
    PRESERVE_MODES,
    RESTEER_TERMS,
    ResteerState,
    check_hooks_ran,
    cross_attention_modules,
    resteer_hooks,
)
from fmn_desktop.resteer.sampling import concat_rows, select_rows, timesteps
from fmn_desktop.resteer.trainable import TrainableDeltas, protect_projector, target_parameters
from fmn_desktop.training import Progress, run_to_end
from fmn_desktop.training.loop import Optimiser

# Defaults that depend on the mode (measured: docs/research/METHOD_NOTES.md). Faithful mode's
# anchor term needs about 70 steps; fast mode optimises each layer on its own for 35. The
# preservation weight was measured with the anchor term (6) and in fast mode (3); the anchor
# term was not measured in fast mode, so it is off there.
MODE_DEFAULTS = {
    "steps": {"faithful": 70, "fast": 35},
    "preserve_weight": {"faithful": 6.0, "fast": 3.0},
    "anchor_weight": {"faithful": 3.0, "fast": 0.0},
}
FAITHFUL_STEPS = MODE_DEFAULTS["steps"]["faithful"]
FAST_STEPS = MODE_DEFAULTS["steps"]["fast"]

DEFAULT_PRESERVE_PROMPTS = [
    "a photo of a dog",
    "a photo of a house",
    "a landscape painting",
    "a portrait of a woman",
    "a red car on a street",
    "a bowl of fruit",
    "a city at night",
    "a photo of a cat",
]


@dataclass
class ForgetConfig:
    """Hyper-parameters of a forget job; every field is stored in the patch metadata.

    Fields left None take their mode's default (`MODE_DEFAULTS`) when the config is made.
    """

    # What to forget
    concepts: list[str] = knob(
        MISSING,
        "concept text as it appears in prompts (repeat for several at once)",
        group="what to forget",
        flag="--concept",
        many=True,
    )
    concept_kind: str = knob(
        "object",
        "picks the prompt templates",
        group="what to forget",
        choices=KINDS,
    )
    templates: list[str] | None = knob(
        None,
        "prompt template with {} for the concept (repeatable; replaces the kind's)",
        group="what to forget",
        flag="--template",
        many=True,
    )
    # Where and how
    mode: str = knob(
        "faithful",
        "faithful: through the whole UNet, as the paper; fast: each layer's K on "
        "cached queries, no UNet backward",
        group="method",
        choices=("faithful", "fast"),
    )
    trainable: str = knob(
        "kv",
        "what changes: attn2 K/V, all of attn2, or the whole UNet",
        group="method",
        choices=("kv", "attn2", "unet"),
    )
    lora_rank: int | None = knob(
        None,
        "train a LoRA of this rank instead of dense deltas",
        group="method",
    )
    positions: str = knob(
        "concept+following+eot",
        "token positions re-steered; 'following' is every position "
        "after the concept, which a causal text encoder fills with it",
        group="method",
        choices=POSITION_MODES,
    )
    layer_weighting: str = "pixels"
    backend: str | None = None  # attention backend (fmn_kernels); None: the best available
    # Loss terms and their weights
    term: str = knob(
        "squares",
        "re-steering term: the paper's sum of squared probabilities on the marked "
        "columns ('squares'), or per pixel the marked mass squared / -log(1 - mass)",
        group="loss terms",
        choices=RESTEER_TERMS,
    )
    resteer_weight: float = knob(
        1.0,
        "weight of the paper's re-steering term; 0 trains the anchor term alone, e.g. to "
        "push 'knight' away from 'Gorvak'",
        group="loss terms",
        bounds="nonneg",
    )
    anchor: str = knob(
        "",
        "what the concept's outputs are pulled towards: each forget prompt with the "
        "concept replaced by TEXT, e.g. 'a person' (default: the concept removed)",
        group="loss terms",
        metavar="TEXT",
    )
    anchor_weight: float | None = knob(
        None,
        "weight of the anchor term (each layer's output for a forget prompt pulled to "
        "the output for the anchor prompt); 0 gives the paper's re-steering alone",
        group="loss terms",
        by_mode=MODE_DEFAULTS["anchor_weight"],
        bounds="nonneg",
    )
    anchor_guidance: float = knob(
        3.0,
        "how far past the anchor, away from the concept, the target lies; negative: past "
        "the concept, away from the anchor",
        group="loss terms",
    )
    preserve_weight: float | None = knob(
        None,
        "weight of the preservation term (other prompts held in place); 0 turns it off",
        group="loss terms",
        by_mode=MODE_DEFAULTS["preserve_weight"],
        bounds="nonneg",
    )
    preserve_mode: str = knob(
        "output",
        "what the preservation term holds for other prompts: attn2 outputs or attention maps",
        group="loss terms",
        choices=PRESERVE_MODES,
    )
    preserve_prompts: list[str] | None = knob(
        None,
        "prompt to hold in place (repeatable; default: the model's world on the embedded "
        "model, a built-in set elsewhere)",
        group="loss terms",
        flag="--preserve-prompt",
        many=True,
    )
    protect_energy: float = 0.0  # >0: K/V deltas vanish on this share of preservation embeddings
    # Reference images
    reference_dir: str | None = knob(
        None,
        "folder of reference images (default: generated by the model itself)",
        group="references",
        flag="--references",
        metavar="DIR",
    )
    num_references: int = knob(
        16,
        "images to generate when no folder is given",
        group="references",
    )
    reference_steps: int = 20
    guidance_scale: float = 5.0
    # Optimiser
    steps: int | None = knob(
        None,
        "optimisation steps (fast mode: per layer)",
        group="optimiser",
        by_mode=MODE_DEFAULTS["steps"],
    )
    lr: float | None = knob(
        None,
        "learning rate (default: 1e-2 K/V, 3e-2 LoRA, 2e-6 whole UNet)",
        group="optimiser",
        bounds="positive",
    )
    batch_size: int = knob(8, "samples per step", group="optimiser")
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    seed: int = knob(0, "random seed of the job", group="optimiser", bounds="seed")

    def __post_init__(self) -> None:
        if not self.concepts or any(not c.strip() for c in self.concepts):
            raise ValueError("give at least one non-empty concept")
        if self.positions not in POSITION_MODES:
            raise ValueError(
                f"unknown positions {self.positions!r}; valid: {', '.join(POSITION_MODES)}"
            )
        if self.layer_weighting not in LAYER_WEIGHTINGS:
            raise ValueError(f"unknown layer weighting {self.layer_weighting!r}")
        if self.preserve_mode not in PRESERVE_MODES:
            raise ValueError(
                f"unknown preservation mode {self.preserve_mode!r}; valid: {', '.join(PRESERVE_MODES)}"
            )
        if self.term not in RESTEER_TERMS:
            raise ValueError(f"unknown term {self.term!r}; valid: {', '.join(RESTEER_TERMS)}")
        if self.mode not in ("faithful", "fast"):
            raise ValueError(f"unknown mode {self.mode!r}; valid: faithful, fast")
        if self.mode == "fast" and self.term != "squares":
            raise ValueError("fast mode optimises the paper's 'squares' term only")
        resolve_by_mode(self, self.mode)
        if self.anchor_weight < 0 or self.preserve_weight < 0 or self.resteer_weight < 0:
            raise ValueError("re-steering, anchor and preservation weights must be >= 0")
        if self.resteer_weight == 0 and self.anchor_weight == 0:
            raise ValueError("re-steering and anchor weights are both 0: nothing to train")
        if self.steps < 1 or self.batch_size < 1 or self.num_references < 1:
            raise ValueError("steps, batch size and number of references must be positive")

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else default_lr(self.trainable, self.lora_rank)


def default_lr(trainable: str, lora_rank: int | None) -> float:
    """The paper's 2e-6 for the whole UNet; dense K/V 1e-2 and LoRA 3e-2, measured on the
    embedded model (docs/research/METHOD_NOTES.md): at 3e-4..1e-3 the concept's attention fell to a
    quarter yet the concept was still drawn. "attn2" uses the K/V rate (not tuned apart)."""
    if trainable == "unet":
        return 2e-6
    return 3e-2 if lora_rank else 1e-2


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


def prepare_inputs(pipe, config: ForgetConfig, gen: torch.Generator) -> JobInputs:
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
    latents = reference_latents(pipe, [prompts[j] for j in order], config, generator=gen)
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


def forget_steps(
    pipe, config: ForgetConfig, fingerprint: str = "", family: str = "sd1"
) -> Generator[Progress, None, ForgetResult]:
    """Run a forget job on `pipe` (left unchanged), yielding progress; returns the patch."""
    started = time.perf_counter()
    gen = torch.Generator("cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    yield Progress("references", 0, config.steps)
    inputs = prepare_inputs(pipe, config, gen)
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
) -> ForgetResult:
    """Run `forget_steps` to the end; `should_cancel()` returning True stops it (CancelledError)."""
    return run_to_end(
        forget_steps(pipe, config, fingerprint, family),
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

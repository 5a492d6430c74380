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
import re
import time
from collections.abc import Callable, Generator
from dataclasses import MISSING, asdict, dataclass, field

import torch
from diffusers import DDPMScheduler

from fmn_desktop.knobs import knob
from fmn_desktop.patch.format import Patch, PatchMeta
from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.resteer.trainable import TrainableDeltas, target_parameters
from fmn_desktop.training import Progress, run_to_end
from fmn_desktop.training.loop import Optimiser

DEFAULT_BROAD_TEMPLATES = [  # none is an evaluation prompt of the toy world (concepts.py)
    "a {} circle",
    "a photo of a {} square",
    "a {} triangle in the style of dots",
    "{} Zorbu",
    "a {} photo in the style of stripes",
    "a photo of a {} ring",
    "a photo of {} Bramor",
    "a {} crescent",
]


@dataclass
class BroadConfig:
    words: list[str] = knob(
        MISSING,
        "a word that draws the attribute (repeatable)",
        group="what to remove",
        flag="--words",
        many=True,
    )
    templates: list[str] | None = knob(
        None,
        "prompt template with {} for the word (repeatable; default: a built-in set)",
        group="what to remove",
        flag="--template",
        many=True,
    )
    eta: float = knob(
        1.0,
        "negative guidance: how far past the base prediction, away from "
        "the attribute, the target lies",
        group="training",
    )
    steps: int = knob(150, "optimisation steps", group="training")
    # lr: the measured setting (docs/research/CORRECTION_AND_BROAD.md)
    lr: float = knob(1e-3, "learning rate", group="training", bounds="positive")
    trainable: str = knob(
        "attn2",
        "what changes: attn2 K/V, or all of attn2",
        group="training",
        choices=("kv", "attn2"),
    )
    # The word-less prompts' term. 4 left 1 frame in 384 word-free images at CFG 1 (base 25;
    # weight 1: 9) and none at CFG 2/5, retention 0.999 -> 0.997
    # (docs/research/CORRECTION_AND_BROAD.md).
    uncaptioned_weight: float = knob(
        4.0,
        "weight of the same prompts without the words (the attribute drawn with no word)",
        group="loss terms",
        bounds="nonneg",
    )
    preserve_weight: float = knob(
        1.0, "weight of the preserved prompts' predictions", group="loss terms", bounds="nonneg"
    )
    # Hold the unconditional ("") prediction: classifier-free guidance measures every prompt
    # against it, and a patch that moved it away from the attribute drew the attribute on
    # word-free prompts (measured: docs/research/CORRECTION_AND_BROAD.md).
    hold_unconditional: bool = True
    # Latents drawn from the preservation prompts, on which those prompts and "" also keep
    # their base predictions: the references above all show the attribute, and a patch held
    # only there was free to move where ordinary prompts' samples go.
    ordinary_references: int = knob(
        16,
        'latents drawn from the preservation prompts, on which they and "" keep the base '
        "prediction (0: only on the attribute's references)",
        group="loss terms",
        bounds="nonneg",
    )
    preserve_prompts: list[str] | None = knob(
        None,
        "prompt to keep unchanged (repeatable; default: the model's world on the "
        "embedded model, a built-in set elsewhere)",
        group="loss terms",
        flag="--preserve-prompt",
        many=True,
    )
    batch_size: int = knob(4, "samples per step", group="training")
    num_references: int = knob(16, "reference images of the attribute, generated", group="training")
    reference_steps: int = 20
    guidance_scale: float = 5.0
    grad_clip: float = 1.0
    seed: int = knob(0, "random seed of the job", group="training", bounds="seed")

    def __post_init__(self) -> None:
        if not self.words or any(not w.strip() for w in self.words):
            raise ValueError("give at least one non-empty word (--words)")
        if self.steps < 1 or self.batch_size < 1 or self.num_references < 1:
            raise ValueError("steps, batch size and number of references must be positive")
        if self.ordinary_references < 0:
            raise ValueError("the number of ordinary references cannot be negative")
        if self.lr <= 0 or self.eta < 0:
            raise ValueError("lr must be > 0 and eta >= 0")
        if self.trainable not in ("kv", "attn2"):
            raise ValueError(f"unknown trainable set {self.trainable!r}; valid: kv, attn2")
        bad = [t for t in (self.templates or []) if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' where the word goes: {bad}")

    def prompt_pairs(self) -> list[tuple[str, str]]:
        """(prompt with a word, the same prompt without it) for every word and template."""
        templates = self.templates or DEFAULT_BROAD_TEMPLATES
        return [(t.format(w), strip_word(t.format(w), w)) for w in self.words for t in templates]


def strip_word(prompt: str, word: str) -> str:
    out = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)\s*", "", prompt, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", out).strip() or "a photo"


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


def draw_latents(pipe, prompts: list[str], n: int, config: BroadConfig, first_seed: int):
    """`n` latents the base model draws, the i-th from prompts[i mod len] at seed first_seed +
    i; returns them (on the UNet's device) and each one's prompt index."""
    lat = [
        pipe(
            prompts[i % len(prompts)],
            num_inference_steps=config.reference_steps,
            guidance_scale=config.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(first_seed + i),
            output_type="latent",
        ).images.float()
        for i in range(n)
    ]
    return torch.cat(lat).to(pipe.unet.device), torch.arange(n) % len(prompts)


def broad_steps(
    pipe, config: BroadConfig, fingerprint: str = "", family: str = "sd1"
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
    yield Progress("references", 0, config.steps)
    with torch.no_grad():
        unsafe_emb, _ = encode_prompts(pipe, [u for u, _ in pairs])
        safe_emb, _ = encode_prompts(pipe, [s for _, s in pairs])
        preserve_emb = encode_prompts(pipe, preserve)[0] if preserve else None
        empty_emb = encode_prompts(pipe, [""])[0] if config.hold_unconditional else None
        latents, owner_t = draw_latents(
            pipe, [u for u, _ in pairs], config.num_references, config, config.seed * 100003
        )
        ordinary = ordinary_owner = None
        if preserve and config.ordinary_references:
            ordinary, ordinary_owner = draw_latents(
                pipe, preserve, config.ordinary_references, config, config.seed * 100003 + 50021
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
) -> BroadResult:
    """Run `broad_steps` to the end; `should_cancel()` returning True raises CancelledError."""
    return run_to_end(
        broad_steps(pipe, config, fingerprint, family),
        progress,
        should_cancel,
        "broad removal cancelled; no patch was written",
    )

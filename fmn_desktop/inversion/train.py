"""Textual inversion: learn a placeholder's embedding vectors from a few images.

The standard method (Gal et al. 2022, as diffusers' `textual_inversion.py` runs it): new
tokenizer entries for the placeholder, one embedding row each; the images' VAE latents are
noised at t ~ U{0..T-1} and the UNet's denoising loss, conditioned on prompts that name the
placeholder, is minimised with respect to those rows only. Every model weight stays frozen and
the original embedding rows are never written (the new rows are substituted at the embedding's
output, so not even Adam's weight decay can reach the old ones). Forget-Me-Not's first stage
for identities known only from photos uses 4 vectors, 500 steps, lr 1e-3 (the defaults here).

`learn_tokens_steps` is a generator yielding `Progress` and returning the
`LearnedTokens`; `learn_tokens` runs it with a progress callback and a cancel check. The
pipeline is left exactly as it was, whatever happens.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fmn_desktop.errors import FmnError
from fmn_desktop.inversion.config import (  # noqa: F401  (re-exported)
    DEFAULT_TEMPLATES,
    InversionConfig,
)
from fmn_desktop.inversion.embedding import LearnedTokens, _text_encoder, installed_tokens
from fmn_desktop.prompts.tokens import expand_placeholders
from fmn_desktop.training import Progress, run_to_end
from fmn_desktop.training.loop import Optimiser


@dataclass
class InversionResult:
    learned: LearnedTokens
    history: list[Progress] = field(default_factory=list)
    seconds: float = 0.0
    loss_before: float = math.nan  # fixed-draw denoising loss with the initial vectors
    loss_after: float = math.nan  # the same draws with the learned vectors


ImagesArg = str | os.PathLike | Sequence[str | os.PathLike] | torch.Tensor


def read_images(pipe, images: ImagesArg) -> torch.Tensor:
    """(N, 3, S, S) in [-1, 1] at the pipeline's resolution, from a folder, files or a tensor
    (already in [-1, 1]; resized if its size differs)."""
    from fmn_desktop.resteer.encode import load_images, load_reference_dir, resolution

    size = resolution(pipe)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
            raise FmnError(f"images must be (N, 3, H, W); got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x.clamp(-1, 1)
    if isinstance(images, (str, os.PathLike)):
        files = load_reference_dir(images)
    else:
        files = [Path(f) for f in images]
        if not files:
            raise FmnError("no images given")
    return load_images(files, size)


@contextmanager
def _frozen(*modules):
    """No gradient into any weight of `modules`, in eval mode; flags restored after."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(m, m.training) for m in modules]
    for p, _ in flags:
        p.requires_grad_(False)
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


class _SubstituteRows:
    """Forward hook on the input embedding: rows of `ids` come from the trainable `vectors`."""

    def __init__(self, ids: list[int], vectors: torch.nn.Parameter):
        self.ids = torch.tensor(ids)
        self.vectors = vectors

    def __call__(self, module, inputs, output):
        input_ids = inputs[0]
        hit = input_ids.unsqueeze(-1) == self.ids.to(input_ids.device)  # (B, L, n)
        if not bool(hit.any()):
            return output
        rows = hit.to(self.vectors.dtype) @ self.vectors  # (B, L, C)
        return torch.where(hit.any(-1, keepdim=True), rows.to(output.dtype), output)


def _initial_vectors(pipe, config: InversionConfig, gen: torch.Generator) -> torch.Tensor:
    weight = _text_encoder(pipe).get_input_embeddings().weight.detach().float().cpu()
    if config.init_word:
        ids = pipe.tokenizer(config.init_word, add_special_tokens=False).input_ids
        if not ids:
            raise FmnError(f"initial word {config.init_word!r} has no tokens")
        return weight[ids].mean(0, keepdim=True).repeat(config.num_vectors, 1)
    std = float(weight.std())
    return torch.randn(config.num_vectors, weight.shape[1], generator=gen) * std


@torch.no_grad()
def _latent_stats(pipe, images: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std of each image (and of its mirror image when `flip`)."""
    vae = pipe.vae
    batch = torch.cat([images, images.flip(-1)]) if flip else images
    means, stds = [], []
    for start in range(0, len(batch), 8):
        dist = vae.encode(batch[start : start + 8].to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def learn_tokens_steps(
    pipe, images: ImagesArg, config: InversionConfig
) -> Generator[Progress, None, InversionResult]:
    """Run textual inversion on `pipe` (left unchanged), yielding progress each step."""
    from diffusers import DDPMScheduler

    from fmn_desktop.resteer.encode import latent_scale

    started = time.perf_counter()
    te = _text_encoder(pipe)
    unet, vae = pipe.unet, pipe.vae
    device = unet.device
    gen = torch.Generator("cpu").manual_seed(config.seed)
    yield Progress("latents", 0, config.steps)  # encoding the images
    pixels = read_images(pipe, images)
    n_images = len(pixels)
    means, stds = _latent_stats(pipe, pixels, config.flip_p > 0)
    scale, shift = latent_scale(vae)
    init = _initial_vectors(pipe, config, gen)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    n_t = sched.config.num_train_timesteps
    prediction = sched.config.prediction_type
    vectors = torch.nn.Parameter(init.clone().to(device))
    placeholder = LearnedTokens(config.placeholder, init)

    def target_for(x0, noise, t):
        if prediction == "v_prediction":
            return sched.get_velocity(x0, noise, t)
        if prediction == "sample":
            return x0
        return noise

    with installed_tokens(pipe, placeholder) as ids, _frozen(unet, te, vae):
        tok = pipe.tokenizer
        prompts = [expand_placeholders(tok, p) for p in config.prompts()]
        prompt_ids = tok(
            prompts,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if not bool((prompt_ids == ids[0]).any(-1).all()):
            raise FmnError("a template lost the placeholder (truncated at 77 tokens?)")
        hook = te.get_input_embeddings().register_forward_hook(_SubstituteRows(ids, vectors))

        def denoise_loss(x0, noise, t, pick) -> torch.Tensor:
            noisy = sched.add_noise(x0, noise, t)
            emb = te(prompt_ids[pick])[0].to(unet.dtype)
            pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=emb).sample
            return F.mse_loss(pred.float(), target_for(x0, noise, t).float())

        # Fixed draws (no flips, posterior means) measure the loss before and after.
        eg = torch.Generator("cpu").manual_seed(config.seed + 1)
        k = max(config.eval_samples, 1)
        e_idx = torch.arange(k) % n_images
        e_x0 = ((means[e_idx] - shift) * scale).to(device)
        e_noise = torch.randn(e_x0.shape, generator=eg).to(device)
        e_t = torch.linspace(0, n_t - 1, k).round().long().to(device)
        e_pick = (torch.arange(k) % len(prompts)).to(device)

        @torch.no_grad()
        def fixed_loss() -> float:
            total = 0.0
            for s in range(0, k, 8):
                sl = slice(s, s + 8)
                part = denoise_loss(e_x0[sl], e_noise[sl], e_t[sl], e_pick[sl])
                total += float(part) * len(e_idx[sl])
            return total / k

        def loss_fn():
            b = config.batch_size
            idx = torch.randint(0, n_images, (b,), generator=gen)
            if config.flip_p > 0:
                flip = torch.rand(b, generator=gen) < config.flip_p
                idx = idx + flip.long() * n_images
            eps = torch.randn(means[idx].shape, generator=gen)
            x0 = ((means[idx] + stds[idx] * eps - shift) * scale).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, n_t, (b,), generator=gen).to(device)
            pick = torch.randint(0, len(prompts), (b,), generator=gen).to(device)
            return denoise_loss(x0, noise, t, pick)

        try:
            loss_before = fixed_loss()
            opt = Optimiser(
                [vectors], config.lr, config.weight_decay, loss_scale=unet.dtype == torch.float16
            )
            history = yield from opt.run(loss_fn, config.steps)
            loss_after = fixed_loss()
        finally:
            hook.remove()
    seconds = time.perf_counter() - started
    hyper = {k: v for k, v in asdict(config).items() if k not in ("placeholder",)}
    hyper["templates"] = list(config.templates or DEFAULT_TEMPLATES)
    meta = {
        "method": "textual-inversion",
        "hyperparameters": hyper,
        "images": n_images,
        "loss_before": round(loss_before, 6),
        "loss_after": round(loss_after, 6),
        "seconds": round(seconds, 3),
    }
    learned = LearnedTokens(config.placeholder, vectors.detach().float().cpu(), meta)
    return InversionResult(learned, history, seconds, loss_before, loss_after)


def learn_tokens(
    pipe,
    images: ImagesArg,
    placeholder: str = "<concept>",
    num_vectors: int = 4,
    steps: int = 500,
    lr: float = 1e-3,
    init_word: str | None = None,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    config: InversionConfig | None = None,
    **options,
) -> InversionResult:
    """Learn `num_vectors` embedding rows for `placeholder` from `images` (a folder, files,
    or an (N, 3, H, W) tensor in [-1, 1]); `config` replaces the keyword settings. The
    pipeline is unchanged afterwards: use `installed_tokens(pipe, result.learned)` to prompt
    with the token. `should_cancel()` returning True stops the job (CancelledError)."""
    if config is None:
        config = InversionConfig(
            placeholder=placeholder,
            num_vectors=num_vectors,
            steps=steps,
            lr=lr,
            init_word=init_word,
            seed=seed,
            **options,
        )
    return run_to_end(
        learn_tokens_steps(pipe, images, config),
        progress,
        should_cancel,
        "textual inversion cancelled; nothing was written",
    )

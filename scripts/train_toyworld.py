"""Reproducible training of the embedded model, stage by stage, on one CPU thread.

Stages (each reads what earlier ones wrote under --out):

- ``data``:  draw the training set (seed 0) and a held-out set (seed 1) of the world;
- ``text``:  train the CLIP text encoder contrastively against a small image tower, then freeze;
- ``vae``:   train the AutoencoderKL, measure its scaling factor, cache the data set's latents;
- ``vaedec``: fine-tune the VAE decoder on the cached latents (encoder frozen);
- ``judge``: train the judge on clean and off-world images (empty, faint, partial, blended) and
  their VAE reconstructions, report held-out accuracy, calibrate its abstain threshold; with no
  VAE under --out it uses the shipped one (retraining only the judge);
- ``unet``:  train the UNet on the frozen text embeddings (cached per caption) and the cached
  latents; eps-prediction, min-SNR weighting, 10% caption dropout, AdamW, EMA. Resumable: a
  checkpoint and a usable pipeline folder (EMA weights) are written every --ckpt-minutes.
- ``package``: copy the exported pipeline, judge and figures into fmn_desktop/toyworld/weights;
- ``grid``: a PNG of samples, one row per concept;
- ``eval``:  prompt following of the exported pipeline, judged (16 seeds per prompt).

A maintenance tool, not part of the installed package (which holds only what the model needs
at run time: the world, the architectures, the judge). Example::

    python scripts/train_toyworld.py --stage all --out runs/toyworld
    python scripts/train_toyworld.py --stage unet --out runs/toyworld --minutes 120  # resumes
    python scripts/train_toyworld.py --stage eval --out runs/toyworld
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fmn_desktop  # noqa: F401  (offline mode before diffusers/transformers load)
from fmn_desktop.models.families import CLIP_TOKENIZER_DIR as TOKENIZER_DIR
from fmn_desktop.toyworld import WEIGHTS_DIR
from fmn_desktop.toyworld import model as M
from fmn_desktop.toyworld.concepts import CONCEPTS, expected_labels
from fmn_desktop.toyworld.judge import Judge
from fmn_desktop.toyworld.world import HEADS, World
from fmn_desktop.training.loop import Optimiser

BETAS = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)

# Default sizes; tests pass a tiny `Config` instead.
DEFAULTS = dict(
    n_train=50000,
    n_heldout=2000,
    n_judge=24000,
    n_judge_recon=8000,
    n_judge_off=12000,
    n_judge_off_recon=4000,
    n_judge_calib=1000,
    judge_off_share=0.35,
    text_steps=400,
    text_batch=256,
    text_lr=1e-3,
    text_cfg={},
    vae_steps=1500,
    vae_batch=32,
    vae_lr=1e-3,
    vae_minutes=9.0,
    vae_cfg={},
    judge_steps=1500,
    judge_batch=128,
    judge_lr=2e-3,
    judge_minutes=18.0,
    vaedec_steps=1500,
    vaedec_lr=5e-4,
    vaedec_minutes=12.0,
    unet_batch=64,
    unet_lr=6e-4,
    unet_warmup=200,
    unet_cfg={},
    ema_decay=0.999,
    caption_dropout=0.1,
    snr_gamma=5.0,
    eval_seeds=16,
    eval_steps=20,
    eval_cfg=5.0,
    eval_templates=2,
)


def log(out: Path, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def cosine_in_budget(lr: float, warmup: int, steps: int, t0: float, budget: float):
    """A rate schedule: linear warm-up over `warmup` steps, then a cosine to zero over the
    steps or the time budget (seconds from `t0`), whichever runs out first."""

    def rate(step: int) -> float:
        frac = min(1.0, max(step / steps, (time.time() - t0) / budget))
        return lr * min(1, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))

    return rate


def run_in_budget(
    out: Path, name: str, opt: Optimiser, loss_fn, steps: int, t0: float, budget: float
) -> int:
    """Train until `steps` steps or the time budget are spent, logging every 100th step;
    returns the steps taken."""
    taken = 0
    for p in opt.run(loss_fn, steps):
        if (p.step - 1) % 100 == 0:
            terms = "".join(f" {k} {v:.3f}" for k, v in p.terms.items())
            log(out, f"{name} {p.step - 1} loss {p.loss:.4f}{terms} ({time.time() - t0:.0f}s)")
        taken = p.step
        if time.time() - t0 >= budget:
            break
    return taken


def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def tokenize(tok, captions: list[str], length: int = M.MAX_LENGTH) -> torch.Tensor:
    ids = tok(
        captions,
        padding="max_length",
        max_length=M.MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids[:, :length]


# ----------------------------------------------------------------------------- data


def stage_data(out: Path, cfg: dict) -> None:
    world = World()
    t0 = time.time()
    for name, seed, n, judge in (
        ("train", 0, cfg["n_train"], False),
        ("heldout", 1, cfg["n_heldout"], False),
        ("judge", 2, cfg["n_judge"], True),
        ("judge_heldout", 3, cfg["n_heldout"], True),
    ):
        images, captions, idx = world.batch(seed, 0, n, judge=judge)
        np.savez_compressed(
            out / f"data_{name}.npz",
            images=images,
            captions=np.array(captions, dtype=object).astype(str),
            **idx,
        )
    log(
        out,
        f"data: drew {cfg['n_train']} train / {cfg['n_heldout']} held-out / "
        f"{cfg['n_judge']} judge images in {time.time() - t0:.0f}s",
    )


def load_data(out: Path, name: str) -> dict:
    d = np.load(out / f"data_{name}.npz", allow_pickle=False)
    return {k: d[k] for k in d.files}


def images_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- text encoder


def caption_constraints(captions: list[str]) -> dict[str, np.ndarray]:
    """Per caption and head, a mask over the head's labels the caption allows (1 = allowed)."""
    out = {h: np.ones((len(captions), len(v)), np.float32) for h, v in HEADS.items()}
    for i, cap in enumerate(captions):
        for head, label in expected_labels(cap).items():
            accepted = CONCEPTS["knight"].accepted if label == "knight" else (label,)
            row = np.zeros(len(HEADS[head]), np.float32)
            for a in accepted:
                row[HEADS[head].index(a)] = 1
            out[head][i] = row
    return out


def consistency(cons: dict[str, np.ndarray], labels: dict[str, np.ndarray], rows, cols):
    """(len(rows), len(cols)) mask: caption rows[i] is consistent with image cols[j]."""
    m = np.ones((len(rows), len(cols)), bool)
    for h in HEADS:
        m &= cons[h][rows][:, labels[h][cols]] > 0
    return m


def stage_text(out: Path, cfg: dict) -> None:
    torch.manual_seed(0)
    tok = tokenizer()
    data = load_data(out, "train")
    caps = [str(c) for c in data["captions"]]
    uniq = sorted(set(caps))
    lookup = {c: i for i, c in enumerate(uniq)}
    cap_index = np.array([lookup[c] for c in caps])
    ids_full = tokenize(tok, uniq)
    length = int((ids_full != M.EOS_ID).sum(1).max()) + 1  # causal: positions after the
    ids = ids_full[:, :length]  # first end-of-text never change the pooled output
    cons = caption_constraints(uniq)
    labels = {h: data[h] for h in HEADS}
    images = images_tensor(data["images"])

    te = M.build_text_encoder(M.text_config(**cfg["text_cfg"]))
    dim = te.config.hidden_size
    tower = M.ImageTower(dim)
    tproj = torch.nn.Linear(dim, dim, bias=False)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(te.parameters()) + list(tower.parameters()) + list(tproj.parameters()) + [scale]
    steps, B = cfg["text_steps"], cfg["text_batch"]

    def rate(s: int) -> float:  # warm-up over 50 steps, then a cosine to zero
        return cfg["text_lr"] * (
            min(1, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )

    rng = np.random.default_rng(0)

    def loss_fn():
        b = rng.choice(len(caps), B, replace=False)
        ci = cap_index[b]
        pos = torch.from_numpy(consistency(cons, labels, ci, b).astype(np.float32))
        t = F.normalize(tproj(te(ids[ci]).pooler_output), dim=-1)
        v = F.normalize(tower(images[b]), dim=-1)
        logits = scale.exp().clamp(max=100) * t @ v.T
        loss_t = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        pos_i = pos.T
        loss_i = -(pos_i / pos_i.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        return (loss_t + loss_i) / 2

    opt = Optimiser(params, rate, weight_decay=0.01, grad_clip=1.0)
    t0 = time.time()
    te.train()
    for p in opt.run(loss_fn, steps):
        if (p.step - 1) % 100 == 0 or p.step == steps:
            log(out, f"text {p.step - 1}/{steps} loss {p.loss:.3f} ({time.time() - t0:.0f}s)")
    te.eval()
    acc = text_retrieval(out, te, tower, tproj, tok)
    te.save_pretrained(out / "text_encoder", safe_serialization=True)
    tok.save_pretrained(out / "tokenizer")
    metrics = dict(text_minutes=(time.time() - t0) / 60, text_steps=steps, **acc)
    write_metrics(out, metrics)
    log(out, f"text: done {metrics}")


@torch.no_grad()
def text_retrieval(out: Path, te, tower, tproj, tok, n: int = 512) -> dict:
    """Held-out top-1 retrieval among n pairs; a hit = labels consistent with the caption."""
    data = load_data(out, "heldout")
    n = min(n, len(data["captions"]))
    caps = [str(c) for c in data["captions"][:n]]
    keep = [i for i, c in enumerate(caps) if c]
    caps = [caps[i] for i in keep]
    labels = {h: data[h][:n][keep] for h in HEADS}
    t = F.normalize(tproj(te(tokenize(tok, caps)).pooler_output), dim=-1)
    v = F.normalize(tower(images_tensor(data["images"][:n][keep])), dim=-1)
    sim = (t @ v.T).numpy()
    cons = caption_constraints(caps)
    ok = consistency(cons, labels, np.arange(len(caps)), np.arange(len(caps)))
    t2i = float(ok[np.arange(len(caps)), sim.argmax(1)].mean())
    i2t = float(ok[sim.argmax(0), np.arange(len(caps))].mean())
    return {"text_to_image_top1": t2i, "image_to_text_top1": i2t, "retrieval_pool": len(caps)}


def write_metrics(out: Path, new: dict) -> None:
    path = out / "metrics.json"
    cur = json.loads(path.read_text()) if path.exists() else {}
    cur.update(new)
    path.write_text(json.dumps(cur, indent=1))


# ----------------------------------------------------------------------------- VAE


def stage_vae(out: Path, cfg: dict) -> None:
    torch.manual_seed(0)
    data = load_data(out, "train")
    images = images_tensor(data["images"])
    vae = M.build_vae(M.vae_config(**cfg["vae_cfg"]))
    steps, B = cfg["vae_steps"], cfg["vae_batch"]
    budget = cfg["vae_minutes"] * 60
    rng = np.random.default_rng(1)

    def loss_fn():
        x = images[rng.choice(len(images), B, replace=False)] * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl, {"kl": kl}

    t0 = time.time()
    rate = cosine_in_budget(cfg["vae_lr"], 50, steps, t0, budget)
    opt = Optimiser(vae.parameters(), rate, grad_clip=1.0)
    vae.train()
    step = run_in_budget(out, "vae", opt, loss_fn, steps, t0, budget)
    vae.eval()
    minutes = (time.time() - t0) / 60
    # Cache latent mean/std of the training set; measure the scaling factor (1/std of samples).
    means, stds = encode_all(vae, images)
    sample = means + stds * torch.randn_like(stds)
    scaling = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=scaling)
    torch.save({"mean": means.half(), "std": stds.half()}, out / "latents_train.pt")
    held = images_tensor(load_data(out, "heldout")["images"])
    psnr = vae_psnr(vae, held)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    metrics = dict(
        vae_steps=step,
        vae_minutes=minutes,
        vae_psnr_heldout=psnr,
        vae_scaling_factor=scaling,
        vae_params=M.count_params(vae),
    )
    write_metrics(out, metrics)
    log(out, f"vae: done {metrics}")


def stage_vaedec(out: Path, cfg: dict) -> None:
    """Fine-tune the VAE decoder on the cached latents; the encoder (latent space) is frozen,
    so a UNet trained on those latents stays valid and its samples decode sharper."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(out / "vae", local_files_only=True)
    images = images_tensor(load_data(out, "train")["images"])
    lat = torch.load(out / "latents_train.pt")
    means, stds = lat["mean"].float(), lat["std"].float()
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    steps, B, budget = cfg["vaedec_steps"], cfg["vae_batch"], cfg["vaedec_minutes"] * 60
    rng = np.random.default_rng(3)

    def loss_fn():
        b = torch.from_numpy(rng.choice(len(images), B, replace=False))
        z = means[b] + stds[b] * torch.randn_like(stds[b])
        x = images[b] * 2 - 1
        rec = vae.decode(z).sample
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)

    t0 = time.time()
    rate = cosine_in_budget(cfg["vaedec_lr"], 20, steps, t0, budget)
    opt = Optimiser(params, rate, grad_clip=1.0)
    vae.train()
    step = run_in_budget(out, "vaedec", opt, loss_fn, steps, t0, budget)
    vae.eval()
    held = images_tensor(load_data(out, "heldout")["images"])
    psnr = vae_psnr(vae, held)
    tmp, old = out / "vae.tmp", out / "vae.old"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    (out / "vae").rename(old)  # swap quickly: a running UNet export reads out/vae
    tmp.rename(out / "vae")
    shutil.rmtree(old, ignore_errors=True)
    for name in ("judge", "judge_off"):  # reconstructions changed
        (out / f"{name}_recon.pt").unlink(missing_ok=True)
    metrics = dict(vaedec_steps=step, vaedec_minutes=(time.time() - t0) / 60, vae_psnr_heldout=psnr)
    write_metrics(out, metrics)
    log(out, f"vaedec: done {metrics}")


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, bs: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), bs):
        d = vae.encode(images[i : i + bs] * 2 - 1).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, bs: int = 500) -> torch.Tensor:
    outs = []
    for i in range(0, len(images), bs):
        z = vae.encode(images[i : i + bs] * 2 - 1).latent_dist.mean
        outs.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(outs)


def vae_psnr(vae, images: torch.Tensor) -> float:
    rec = reconstruct(vae, images)
    rec = (rec * 255).round() / 255
    mse = ((rec - images) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean())


# ----------------------------------------------------------------------------- judge


# Seeds of the judge's data: 2 clean (training), 3 clean (held out), 4 off-world (training),
# 5 clean + off-world (calibration of the abstain threshold). Seeds 6 and up are never drawn
# here: `experiments/judge_heldout.py` tests on them.
JUDGE_OFF_SEED, JUDGE_CALIB_SEED = 4, 5


def judge_data(out: Path, cfg: dict) -> None:
    """Draw the judge's data sets that `out` lacks (the data stage draws the clean ones)."""
    world = World()
    t0 = time.time()
    for name, seed, n in (
        ("judge", 2, cfg["n_judge"]),
        ("judge_heldout", 3, cfg["n_heldout"]),
        ("judge_calib", JUDGE_CALIB_SEED, cfg["n_judge_calib"]),
    ):
        if not (out / f"data_{name}.npz").exists():
            images, _, idx = world.batch(seed, 0, n, judge=True)
            np.savez_compressed(out / f"data_{name}.npz", images=images, **idx)
    for name, seed, n in (
        ("judge_off", JUDGE_OFF_SEED, cfg["n_judge_off"]),
        ("judge_calib_off", JUDGE_CALIB_SEED, cfg["n_judge_calib"]),
    ):
        if not (out / f"data_{name}.npz").exists():
            images, kinds, targets = world.batch_offworld(seed, 0, n)
            np.savez_compressed(
                out / f"data_{name}.npz",
                images=images,
                kinds=np.array(kinds).astype(str),
                **{f"t_{h}": t for h, t in targets.items()},
            )
    log(out, f"judge data ready ({time.time() - t0:.0f}s)")


def one_hot_targets(data: dict) -> dict[str, torch.Tensor]:
    return {h: F.one_hot(torch.from_numpy(data[h]), len(v)).float() for h, v in HEADS.items()}


def soft_targets(data: dict) -> dict[str, torch.Tensor]:
    return {h: torch.from_numpy(data[f"t_{h}"]).float() for h in HEADS}


def judge_vae(out: Path):
    """The run's VAE, or the shipped one (retraining only the judge of the embedded model)."""
    from diffusers import AutoencoderKL

    path = out / "vae" if (out / "vae").exists() else WEIGHTS_DIR / "vae"
    return AutoencoderKL.from_pretrained(path, local_files_only=True).eval()


def cached_recon(out: Path, name: str, vae, images: torch.Tensor) -> torch.Tensor:
    """uint8 VAE reconstructions of `images` (uint8 NCHW), cached under `out`."""
    cache = out / f"{name}_recon.pt"
    if cache.exists():
        rec = torch.load(cache)
        if len(rec) == len(images):
            return rec
    rec = (reconstruct(vae, images.float() / 255) * 255).round().to(torch.uint8)
    torch.save(rec, cache)
    return rec


def stage_judge(out: Path, cfg: dict) -> None:
    """Train the judge on world images and off-world images (empty, faint, partial and blended
    subjects, blended styles; soft targets, see `world.draw_offworld`), each half the time as
    a VAE reconstruction; then calibrate its abstain threshold (`judge.calibrate_abstain`)."""
    from fmn_desktop.toyworld.judge import calibrate_abstain

    torch.manual_seed(0)
    judge_data(out, cfg)
    vae = judge_vae(out)
    data, off = load_data(out, "judge"), load_data(out, "judge_off")

    def u8(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    pools = []  # (uint8 images, uint8 reconstructions of the first nr, targets)
    for d, targets, n_rec in (
        (data, one_hot_targets(data), cfg["n_judge_recon"]),
        (off, soft_targets(off), cfg["n_judge_off_recon"]),
    ):
        x = u8(d["images"])
        nr = min(n_rec, len(x))
        name = "judge" if d is data else "judge_off"
        pools.append((x, cached_recon(out, name, vae, x[:nr]), targets))
    net = M.JudgeNet()
    steps, B = cfg["judge_steps"], cfg["judge_batch"]
    n_off = int(round(B * cfg["judge_off_share"]))
    budget = cfg["judge_minutes"] * 60
    rng = np.random.default_rng(2)

    def draw(pool, n):
        x, rec, targets = pool
        b = torch.from_numpy(rng.choice(len(x), n, replace=False))
        nr = len(rec)
        use_rec = torch.from_numpy(rng.random(n) < 0.5) & (b < nr)
        img = torch.where(use_rec[:, None, None, None], rec[b.clamp(max=max(nr - 1, 0))], x[b])
        return img.float() / 255, {h: t[b] for h, t in targets.items()}

    def loss_fn():
        x1, t1 = draw(pools[0], B - n_off)
        x2, t2 = draw(pools[1], n_off)
        x = torch.cat([x1, x2])
        x = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)  # robustness to generation noise
        logits = net(x)
        return sum(F.cross_entropy(logits[h], torch.cat([t1[h], t2[h]])) for h in HEADS)

    t0 = time.time()
    rate = cosine_in_budget(cfg["judge_lr"], 30, steps, t0, budget)
    opt = Optimiser(net.parameters(), rate, weight_decay=0.01)
    net.train()
    step = run_in_budget(out, "judge", opt, loss_fn, steps, t0, budget)
    judge = Judge(net.eval())
    held = load_data(out, "judge_heldout")
    himg = images_tensor(held["images"])
    acc_clean = judge_accuracy(judge, himg, held)
    acc_rec = judge_accuracy(judge, reconstruct(vae, himg), held)
    cal, cal_off = load_data(out, "judge_calib"), load_data(out, "judge_calib_off")
    cal_x = torch.cat([images_tensor(cal["images"]), images_tensor(cal_off["images"])])
    cal_x = torch.cat([cal_x, reconstruct(vae, cal_x)])
    cal_t = {
        h: torch.cat([one_hot_targets(cal)[h], soft_targets(cal_off)[h]]).repeat(2, 1)
        for h in HEADS
    }
    judge.abstain, calib = calibrate_abstain(judge, cal_x, cal_t)
    judge.save(out / "judge.safetensors")
    metrics = dict(
        judge_steps=step,
        judge_minutes=(time.time() - t0) / 60,
        judge_acc_clean=acc_clean,
        judge_acc_recon=acc_rec,
        judge_abstain=judge.abstain,
        judge_abstain_calibration=calib,
    )
    write_metrics(out, metrics)
    log(out, f"judge: done {metrics}")


def judge_accuracy(judge: Judge, x: torch.Tensor, data: dict) -> dict[str, float]:
    probs = judge.predict(x)
    return {h: float((probs[h].argmax(-1).numpy() == data[h]).mean()) for h in HEADS}


# ----------------------------------------------------------------------------- UNet


def noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**BETAS, prediction_type="epsilon", clip_sample=False)


@torch.no_grad()
def caption_embeddings(out: Path, captions: list[str]) -> tuple[list[str], torch.Tensor]:
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(out / "text_encoder", local_files_only=True).eval()
    tok = tokenizer()
    uniq = sorted(set(captions) | {""})
    embs = []
    for i in range(0, len(uniq), 256):
        embs.append(te(tokenize(tok, uniq[i : i + 256])).last_hidden_state)
    return uniq, torch.cat(embs)


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def build_pipeline(out: Path, unet):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(out / "vae", local_files_only=True)
    te = CLIPTextModel.from_pretrained(out / "text_encoder", local_files_only=True)
    sched = DPMSolverMultistepScheduler(**BETAS, prediction_type="epsilon", steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tokenizer(),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export_pipeline(
    out: Path, unet_state: dict, cfg: dict, dest: Path, state: dict | None = None
) -> None:
    """Write a complete diffusers folder (plus the judge) atomically to `dest`."""
    unet = M.build_unet(M.unet_config(**cfg["unet_cfg"]))
    unet.load_state_dict(unet_state)
    pipe = build_pipeline(out, unet)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in ("judge.safetensors", "judge.json"):
        if (out / name).exists():
            shutil.copy(out / name, tmp / name)
    if state:
        (tmp / "train_state.json").write_text(json.dumps(state, indent=1))
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def stage_unet(out: Path, cfg: dict, minutes: float, max_steps: int, ckpt_minutes: float) -> None:
    data = load_data(out, "train")
    caps = [str(c) for c in data["captions"]]
    lat = torch.load(out / "latents_train.pt")
    means, stds = lat["mean"].float(), lat["std"].float()
    from diffusers import AutoencoderKL

    scaling = AutoencoderKL.load_config(out / "vae")["scaling_factor"]
    uniq, embs = caption_embeddings(out, caps)
    lookup = {c: i for i, c in enumerate(uniq)}
    cap_idx = torch.tensor([lookup[c] for c in caps])
    empty = lookup[""]
    dim = embs.shape[-1]
    cfg["unet_cfg"] = {"cross_attention_dim": dim, **cfg["unet_cfg"]}
    unet = M.build_unet(M.unet_config(**cfg["unet_cfg"]))
    opt = Optimiser(
        unet.parameters(),
        lambda s: cfg["unet_lr"] * min(1.0, (s + 1) / cfg["unet_warmup"]),
        weight_decay=0.01,
        grad_clip=1.0,
    )
    ema = EMA(unet, cfg["ema_decay"])
    sched = noise_scheduler()
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    weight = torch.clamp(snr, max=cfg["snr_gamma"]) / snr  # min-SNR-gamma for eps-prediction
    ckpt_path = out / "unet_ckpt.pt"
    step, wall = 0, 0.0
    gen = torch.Generator().manual_seed(0)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        opt.optimizer.load_state_dict(ck["opt"])
        ema.shadow = ck["ema"]
        step, wall = ck["step"], ck["wall"]
        gen.set_state(ck["gen"])
        log(out, f"unet: resumed at step {step} ({wall / 60:.1f} min trained)")
    log(
        out,
        f"unet: {M.count_params(unet)} params, {len(uniq)} unique captions, scaling {scaling:.4f}",
    )
    B = cfg["unet_batch"]
    t_start = time.time()
    last_ckpt = time.time()
    losses: list[float] = []
    unet.train()
    end_step = step + max_steps if max_steps else None

    def save() -> None:
        torch.save(
            {
                "unet": unet.state_dict(),
                "opt": opt.optimizer.state_dict(),
                "ema": ema.shadow,
                "step": step,
                "wall": wall,
                "gen": gen.get_state(),
                "cfg": cfg,
            },
            str(ckpt_path) + ".tmp",
        )
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        export_pipeline(
            out, ema.shadow, cfg, out / "pipeline", {"unet_steps": step, "unet_minutes": wall / 60}
        )
        write_metrics(
            out,
            {
                "unet_steps": step,
                "unet_minutes": wall / 60,
                "unet_batch": B,
                "unet_params": M.count_params(unet),
            },
        )
        log(out, f"unet: checkpoint + pipeline at step {step} ({wall / 60:.1f} min)")

    def loss_fn():
        b = torch.randint(0, len(caps), (B,), generator=gen)
        z = (means[b] + stds[b] * torch.randn(means[b].shape, generator=gen)) * scaling
        ci = cap_idx[b].clone()
        ci[torch.rand(B, generator=gen) < cfg["caption_dropout"]] = empty
        cond = embs[ci]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (B,), generator=gen)
        noisy = sched.add_noise(z, noise, t)
        pred = unet(noisy, t, cond).sample
        return (((pred - noise) ** 2).mean((1, 2, 3)) * weight[t]).mean()

    t_step = time.time()
    for p in opt.run(loss_fn, None, start=step):  # until the budget or --max-steps is spent
        step = p.step
        ema.update(unet, step - 1)
        wall += time.time() - t_step
        losses.append(p.loss)
        if step % 50 == 0:
            log(
                out,
                f"unet {step} loss {np.mean(losses):.4f} "
                f"({(time.time() - t_start) / 60:.1f} min this run)",
            )
            losses = []
        done = (time.time() - t_start > minutes * 60) or (end_step is not None and step >= end_step)
        if done or time.time() - last_ckpt > ckpt_minutes * 60:
            save()
            last_ckpt = time.time()
        if done:
            break
        t_step = time.time()


# ----------------------------------------------------------------------------- evaluation


def eval_prompts(templates: int = 2) -> list[str]:
    """Prompts covering every concept (each concept's first `templates` templates)."""
    prompts: list[str] = []
    for c in CONCEPTS.values():
        for p in c.prompts()[:templates]:
            if p not in prompts:
                prompts.append(p)
    return prompts


@torch.no_grad()
def prompt_following(
    pipe,
    judge: Judge,
    prompts: list[str],
    seeds: int = 16,
    steps: int = 20,
    guidance: float = 5.0,
    log_fn=print,
) -> dict:
    """Judge agreement with each prompt's stated attributes over `seeds` seeds per prompt."""
    hits: dict[str, list[int]] = {h: [] for h in HEADS}
    per_prompt, hist = {}, {}
    for p in prompts:
        exp = expected_labels(p)
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        imgs = pipe(
            [p] * seeds,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="pt",
        ).images
        got = judge.labels(imgs.float())
        row = {}
        for h, want in exp.items():
            accepted = CONCEPTS["knight"].accepted if want == "knight" else (want,)
            ok = [int(g in accepted) for g in got[h]]
            hits[h] += ok
            row[h] = float(np.mean(ok))
        per_prompt[p] = row
        hist[p] = {h: {k: got[h].count(k) for k in sorted(set(got[h]))} for h in HEADS}
        log_fn(f"eval {p!r}: {row}")
    summary = {h: (float(np.mean(v)) if v else None) for h, v in hits.items()}
    counts = {h: len(v) for h, v in hits.items()}
    return {
        "per_attribute": summary,
        "images_per_attribute": counts,
        "per_prompt": per_prompt,
        "judged_labels": hist,
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
    }


def stage_eval(out: Path, cfg: dict, pipeline_dir: Path | None = None, tag: str = "") -> dict:
    from diffusers import StableDiffusionPipeline

    pdir = pipeline_dir or out / "pipeline"
    pipe = StableDiffusionPipeline.from_pretrained(pdir, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.load(
        pdir / "judge.safetensors"
        if (pdir / "judge.safetensors").exists()
        else out / "judge.safetensors"
    )
    t0 = time.time()
    res = prompt_following(
        pipe,
        judge,
        eval_prompts(cfg["eval_templates"]),
        cfg["eval_seeds"],
        cfg["eval_steps"],
        cfg["eval_cfg"],
        log_fn=lambda m: log(out, m),
    )
    res["minutes"] = (time.time() - t0) / 60
    meta = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    state = pdir / "train_state.json"
    if state.exists():
        meta = json.loads(state.read_text())
    res["unet_steps"] = meta.get("unet_steps")
    res["unet_minutes"] = meta.get("unet_minutes")
    res["pipeline"] = str(pdir)
    name = f"eval_{tag or 'step' + str(res['unet_steps'])}.json"
    (out / name).write_text(json.dumps(res, indent=1))
    log(out, f"eval: {res['per_attribute']} ({res['minutes']:.1f} min) -> {name}")
    return res


@torch.no_grad()
def stage_grid(out: Path, cfg: dict, seeds: int = 8) -> Path:
    """A PNG grid (one row per prompt, `seeds` columns) of the exported pipeline's samples."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(
        out / "pipeline", local_files_only=True, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(1)
    rows = []
    for p in prompts:
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        imgs = pipe(
            [p] * seeds,
            num_inference_steps=cfg["eval_steps"],
            guidance_scale=cfg["eval_cfg"],
            generator=gens,
            output_type="np",
        ).images
        rows.append(np.concatenate(list(imgs), axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    path = out / "grid.png"
    Image.fromarray(grid).save(path)
    (out / "grid.txt").write_text("\n".join(prompts))
    return path


def stage_package(out: Path, src: Path | None = None, dest: Path | None = None) -> Path:
    """Copy an exported pipeline (+ judge, metrics, latest eval) into the package."""
    dest = dest or WEIGHTS_DIR
    src = src or out / "pipeline"
    if not (src / "model_index.json").exists():
        raise SystemExit(f"no exported pipeline at {src}: run the unet stage first")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    # Size: the text encoder (49,408-row embedding) is stored in fp16 (it loads as fp32; the
    # rounding moves embeddings by ~1e-3 relative), and the tokenizer folder holds the CLIP
    # vocab/merges files already shipped with the package instead of a 3.6 MB tokenizer.json.
    from safetensors.torch import load_file, save_file

    te_file = dest / "text_encoder" / "model.safetensors"
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in load_file(te_file).items()},
        str(te_file),
        metadata={"format": "pt"},
    )
    shutil.rmtree(dest / "tokenizer")
    shutil.copytree(TOKENIZER_DIR, dest / "tokenizer")
    for name in ("judge.safetensors", "judge.json", "metrics.json"):
        if (out / name).exists():
            shutil.copy(out / name, dest / name)
    if (src / "train_state.json").exists() and (dest / "metrics.json").exists():
        # training may have gone on since `src` was exported: state the shipped UNet's figures
        metrics = json.loads((dest / "metrics.json").read_text())
        metrics.update(json.loads((src / "train_state.json").read_text()))
        (dest / "metrics.json").write_text(json.dumps(metrics, indent=1))
    evals = [
        p for p in out.glob("eval_*.json") if json.loads(p.read_text()).get("pipeline") == str(src)
    ]
    if evals:  # the evaluation of exactly these weights
        shutil.copy(max(evals, key=lambda p: p.stat().st_mtime), dest / "eval.json")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    log(out, f"package: {src} -> {dest} ({size / 2**20:.1f} MiB)")
    return dest


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--stage", default="all", help="data,text,vae,judge,unet,eval or 'all' (comma list allowed)"
    )
    ap.add_argument("--out", default="runs/toyworld")
    ap.add_argument("--minutes", type=float, default=120.0, help="UNet wall budget this run")
    ap.add_argument("--max-steps", type=int, default=0, help="UNet steps this run (0: no cap)")
    ap.add_argument("--ckpt-minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default="", help="JSON overrides of DEFAULTS")
    ap.add_argument(
        "--pipeline", default="", help="eval/package: pipeline folder (default OUT/pipeline)"
    )
    ap.add_argument("--tag", default="", help="eval: name of the result file eval_TAG.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(DEFAULTS)
    if args.config:
        cfg.update(json.loads(args.config))
    stages = (
        ["data", "text", "vae", "vaedec", "judge", "unet"]
        if args.stage == "all"
        else args.stage.split(",")
    )
    for s in stages:
        log(out, f"stage {s} start")
        if s == "data":
            stage_data(out, cfg)
        elif s == "text":
            stage_text(out, cfg)
        elif s == "vae":
            stage_vae(out, cfg)
        elif s == "vaedec":
            stage_vaedec(out, cfg)
        elif s == "judge":
            stage_judge(out, cfg)
        elif s == "unet":
            stage_unet(out, cfg, args.minutes, args.max_steps, args.ckpt_minutes)
        elif s == "eval":
            stage_eval(out, cfg, Path(args.pipeline) if args.pipeline else None, args.tag)
        elif s == "package":
            stage_package(out, Path(args.pipeline) if args.pipeline else None)
        elif s == "grid":
            stage_grid(out, cfg)
        else:
            raise SystemExit(f"unknown stage {s!r}")


if __name__ == "__main__":
    main()

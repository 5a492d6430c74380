"""Full forget-job benchmark: seconds per step, steps and peak GPU memory of
faithful-eager, faithful-fused and fast mode, on the SD1.5 (512 px) and SDXL (1024 px) UNet
architectures with random weights (timings depend on shapes, not on weights).

    python bench/bench_forget.py                      # both architectures, appends docs/research/BENCHMARKS.md
    python bench/bench_forget.py --arch sd1 --steps 6 --no-write
    python bench/bench_forget.py --tiny --device cpu --no-write   # a CPU dry run of the script

"faithful-eager" runs the attn2 re-steering processor on the PyTorch reference (probabilities
materialised, fp32 softmax), "faithful-fused" on the Triton kernel, "fast" is the per-layer
mode on cached queries. All three run the same job: one concept, the default templates, the
preservation term on, batch 1 (the paper's), dense K/V. Each job's reference images are
generated with 2 sampler steps (excluded from the timings); the first training step of each
job is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fmn_desktop  # noqa: E402,F401  (offline mode)

MODES = {
    "faithful-eager": {"mode": "faithful", "backend": "torch"},
    "faithful-fused": {"mode": "faithful", "backend": "triton"},
    "fast": {"mode": "fast"},
}
SIZES = {"sd1": 512, "sdxl": 1024}


def random_pipeline(family: str, device: str, dtype: torch.dtype, tiny: bool = False):
    """A pipeline of the family's real architecture (shipped configs) with random weights."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from fmn_desktop.models import config_dir, family_tokenizers

    cfg = config_dir(family)
    unet_cfg = UNet2DConditionModel.load_config(cfg / "unet")
    if tiny:  # a CPU dry run: same code path, toy widths
        unet_cfg = {
            **unet_cfg,
            "block_out_channels": [32, 64, 64, 64][: len(unet_cfg["block_out_channels"])],
            "sample_size": 8,
            "norm_num_groups": 8,
            "attention_head_dim": 8,
            "transformer_layers_per_block": 1,
        }
    unet = UNet2DConditionModel.from_config(unet_cfg)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
    tokenizers = family_tokenizers(family)
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder"))
    sched = DPMSolverMultistepScheduler.from_config(
        DPMSolverMultistepScheduler.load_config(cfg / "scheduler")
    )
    if family == "sdxl":
        text2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2"))
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text,
            text_encoder_2=text2,
            unet=unet,
            scheduler=sched,
            **tokenizers,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **tokenizers,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def run_job(pipe, mode: str, steps: int, device: str) -> dict:
    from fmn_desktop.resteer import ForgetConfig, forget_steps

    config = ForgetConfig(
        concepts=["castle"],
        steps=steps,
        num_references=2,
        reference_steps=2,
        batch_size=1,
        **MODES[mode],
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, last = [], None
    job = forget_steps(pipe, config)
    try:
        while True:
            prog = next(job)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            now = time.perf_counter()
            if prog.phase != "references" and last is not None:
                times.append(now - last)
            last = now
    except StopIteration as stop:
        result = stop.value
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    timed = times[1:] if len(times) > 1 else times  # the first step is a warm-up
    return {
        "mode": mode,
        "steps": len(result.history),
        "s_per_step": statistics.median(timed),
        "total_s": sum(times),
        "peak_gib": peak,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=list(SIZES), action="append")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--steps", type=int, default=8, help="faithful steps per job (fast: per layer)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy widths: a dry run of the script")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "research" / "BENCHMARKS.md")
    args = ap.parse_args()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    if args.device == "cpu" and "faithful-fused" in args.modes:
        args.modes.remove("faithful-fused")  # the kernel needs CUDA (or the interpreter)
    rows = []
    for arch in args.arch or list(SIZES):
        pipe = random_pipeline(arch, args.device, dtype, tiny=args.tiny)
        for mode in args.modes:
            try:
                row = run_job(pipe, mode, args.steps, args.device)
            except torch.cuda.OutOfMemoryError as exc:
                row = {
                    "mode": mode,
                    "steps": 0,
                    "s_per_step": float("nan"),
                    "total_s": float("nan"),
                    "peak_gib": float("nan"),
                    "error": str(exc)[:80],
                }
                torch.cuda.empty_cache()
            row["arch"] = arch
            rows.append(row)
            print(row, flush=True)
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    table = format_table(rows, args)
    print(table)
    if not args.no_write:
        with open(args.out, "a") as fh:
            fh.write("\n" + table + "\n")
    return 0


def format_table(rows: list[dict], args) -> str:
    import triton

    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### Forget job ({when}, {dev}, torch {torch.__version__}, triton "
        f"{triton.__version__}{', tiny dry run' if args.tiny else ''})",
        "",
        "| arch | px | mode | steps | s/step | x vs eager | total s | peak GiB | x mem vs eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        base = next((r for r in rows if r["arch"] == arch and r["mode"] == "faithful-eager"), None)
        for r in (r for r in rows if r["arch"] == arch):
            speed = base["s_per_step"] / r["s_per_step"] if base else float("nan")
            mem = r["peak_gib"] / base["peak_gib"] if base else float("nan")
            lines.append(
                f"| {arch} | {SIZES[arch]} | {r['mode']} | {r['steps']} | "
                f"{r['s_per_step']:.3f} | {speed:.2f} | {r['total_s']:.1f} | "
                f"{r['peak_gib']:.2f} | {mem:.2f} |"
            )
    lines.append("")
    lines.append(
        "Fast mode's steps are per-layer steps (one cheap attention per step), so its "
        "s/step is not a like-for-like ratio; compare total seconds."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

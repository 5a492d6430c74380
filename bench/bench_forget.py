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
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fmn_desktop  # noqa: E402,F401  (offline mode)

# Variant: (ForgetConfig mode, attention backend); bench/estimate_gpu.py estimates the same.
VARIANTS = {
    "faithful-eager": ("faithful", "torch"),
    "faithful-fused": ("faithful", "triton"),
    "fast-eager": ("fast", "torch"),
    "fast-fused": ("fast", "triton"),
}
SIZES = {"sd1": 512, "sd2": 768, "sdxl": 1024}


def job_config(
    mode: str,
    steps: int | None,
    batch_size: int = 8,
    references: int = 16,
    backend: str | None = None,
):
    """The benchmarked job: one concept, the default templates and loss terms (preservation
    on; faithful mode's anchor term on), dense K/V, the product's batch size and reference
    count; steps None: the mode's default. References are generated with 2 sampler steps."""
    from fmn_desktop.resteer import ForgetConfig

    return ForgetConfig(
        concepts=["castle"],
        mode=mode,
        steps=steps,
        batch_size=batch_size,
        num_references=references,
        reference_steps=2,
        backend=backend,
    )


def random_pipeline(family: str, device: str, dtype: torch.dtype, tiny: bool = False):
    """A pipeline of the family's real architecture (shipped configs) with random weights.

    The modules are built in place, on `device` in `dtype` (no `.to()`: quicker on a GPU than
    a CPU build in fp32, and `bench/estimate_gpu.py` builds on fake tensors, whose parameters
    `Module.to` cannot swap once transformers' initialisation holds weak references to them).
    """
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

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
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(unet_cfg)
            vae_cfg = AutoencoderKL.load_config(cfg / "vae")
            if tiny:  # the VAE only sets the latent scale here (references stay latents)
                vae_cfg = {
                    **vae_cfg,
                    "block_out_channels": [32] * len(vae_cfg["block_out_channels"]),
                }
            vae = AutoencoderKL.from_config(vae_cfg)
            text = CLIPTextModel(_text_config(cfg / "text_encoder", tiny))
            text2 = None
            if family == "sdxl":
                text2 = CLIPTextModelWithProjection(_text_config(cfg / "text_encoder_2", tiny))
    finally:
        torch.set_default_dtype(previous)
    # transformers builds some CLIP parameters in fp32 whatever the default; a checkpoint
    # loaded in fp16 has none.
    for module in (unet, vae, text, text2):
        for param in module.parameters() if module is not None else ():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    tokenizers = family_tokenizers(family)
    sched = DPMSolverMultistepScheduler.from_config(
        DPMSolverMultistepScheduler.load_config(cfg / "scheduler")
    )
    if family == "sdxl":
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
    return pipe


def _text_config(folder: Path, tiny: bool):
    from transformers import CLIPTextConfig

    config = CLIPTextConfig.from_pretrained(folder)
    if tiny:  # the widths the UNet reads stay; one layer, a narrow MLP
        config.num_hidden_layers = 1
        config.intermediate_size = 64
    return config


def run_job(pipe, variant: str, steps: int, device: str, batch_size: int, references: int) -> dict:
    from fmn_desktop.resteer import forget_steps

    mode, backend = VARIANTS[variant]
    if device == "cpu" and backend == "triton":
        backend = None  # the CPU dry run: the reference (the kernel needs CUDA or the interpreter)
    config = job_config(mode, steps, batch_size, references, backend)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, last = [], None
    job = forget_steps(pipe, config)
    try:
        while True:
            prog = next(job)
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if prog.phase != "references" and last is not None:
                times.append(now - last)
            last = now
    except StopIteration as stop:
        result = stop.value
    # The first interval holds reference generation (and fast mode's query caching): not timed.
    timed = times[1:] if len(times) > 1 else times
    default_steps = job_config(mode, None, batch_size, references).steps
    total_default = default_steps * (len(result.history) // steps)  # fast: per layer
    mean = statistics.fmean(timed)
    return {
        "variant": variant,
        "steps": len(result.history),
        "s_per_step": statistics.median(timed),
        "job_s": mean * total_default,  # the default step count at this run's mean step time
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=list(SIZES), action="append")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=8, help="faithful steps per job (fast: per layer)")
    ap.add_argument("--batch-size", type=int, default=8, help="samples per step (product: 8)")
    ap.add_argument("--references", type=int, default=16, help="reference images (product: 16)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy widths: a dry run of the script")
    ap.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "research" / "BENCHMARKS.md")
    ap.add_argument(
        "--estimates",
        type=Path,
        default=REPO / "bench" / "gpu_estimates.json",
        help="bench/estimate_gpu.py's rows, shown beside the measured ones",
    )
    ap.add_argument("--table", type=Path, help="also write the table (estimates beside) here")
    args = ap.parse_args()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    estimates = json.loads(args.estimates.read_text()) if args.estimates.exists() else []
    rows = []
    for arch in args.arch or ["sd1", "sdxl"]:
        pipe = random_pipeline(arch, args.device, dtype, tiny=args.tiny)
        for variant in args.variants:
            try:
                row = run_job(
                    pipe, variant, args.steps, args.device, args.batch_size, args.references
                )
            except torch.cuda.OutOfMemoryError as exc:
                row = {"variant": variant, "steps": 0, "error": "out of memory: " + str(exc)[:60]}
                torch.cuda.empty_cache()
            row["arch"] = arch
            row["px"] = SIZES[arch] if not args.tiny else pipe.unet.config.sample_size * 8
            rows.append(row)
            print(row, flush=True)
            if args.table:  # after every job: a run cut off keeps the jobs done
                write_atomic(args.table, format_table(rows, estimates, args) + "\n")
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    table = format_table(rows, estimates, args)
    print(table)
    if not args.no_write:
        with open(args.out, "a") as fh:
            fh.write("\n" + table + "\n")
    return 0


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _num(value, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def format_table(rows: list[dict], estimates: list[dict], args) -> str:
    import triton

    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    est = {
        (e["arch"], e["variant"]): e
        for e in estimates
        if e["batch"] == args.batch_size
        and e["references"] == args.references
        and not e.get("checkpointing")
    }
    lines = [
        f"### Forget job, measured beside the estimate ({when}, {dev}, torch "
        f"{torch.__version__}, triton {triton.__version__}"
        f"{', tiny dry run: not a measurement' if args.tiny else ''})",
        "",
        f"Batch {args.batch_size}, {args.references} references, {args.steps} steps per job "
        "(fast: per layer), random weights at the real shapes, fp16. Estimates: "
        "`bench/estimate_gpu.py` (fake tensors; the lower bound of time is the FLOPs at the "
        "H100/H200 dense fp16 peak). Job s: the mode's default step count at the measured mean "
        "step time (reference generation and query caching excluded).",
        "",
        "| arch | px | variant | peak GiB est. | peak GiB meas. | meas./est. | s/step >= (est.) "
        "| s/step meas. | job s >= (est.) | job s meas. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = est.get((r["arch"], r["variant"]), {}) if not args.tiny else {}
        peak, epeak = r.get("peak_gib"), e.get("peak_gib")
        ratio = peak / epeak if peak is not None and epeak else None
        lines.append(
            f"| {r['arch']} | {r['px']} | {r['variant']} | {_num(epeak, '.2f')} | "
            f"{_num(peak, '.2f') if 'error' not in r else r['error']} | {_num(ratio, '.2f')} | "
            f"{_num(e.get('step_s_bound'), '.3g')} | {_num(r.get('s_per_step'), '.3f')} | "
            f"{_num(e.get('job_s_bound'), '.3g')} | {_num(r.get('job_s'), '.1f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

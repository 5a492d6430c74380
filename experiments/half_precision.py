"""Half precision on the CPU: the CUDA default's path (half base weights, fp32 deltas) run in
fp16 and bf16 on the embedded model, against fp32.

For each job (forget faithful and fast, closed-form correction, broad removal, textual
inversion) and each dtype, the model is loaded in that dtype (`open_model(...,
half_on_cpu=True)`), the job runs under `training.loop.DeltaTrace` (per step: ||delta||, the
share of exactly-zero gradient entries), and the patch is scored on the same model (M-Score of
the concept and retention of the others, after only). Every half run is then compared with the
fp32 run step by step: ||delta_half - delta_fp32|| / ||delta_fp32||. The closed-form
correction has no steps: its delta is compared once.

    OMP_NUM_THREADS=1 python experiments/half_precision.py --threads 1 --out runs/half.json

Small settings on purpose (a shared 2-core CPU, fp16 there ~4x slower than fp32); the
figures are in docs/research/BENCHMARKS.md ("Half precision on the CPU").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmn_desktop.training.loop import DeltaTrace, watch_steps  # noqa: E402

JOBS = ("forget", "fast", "correct", "broad", "invert")
DTYPES = ("fp32", "fp16", "bf16")


def forget_patch(model, args, mode: str):
    from fmn_desktop.resteer import ForgetConfig, forget
    from fmn_desktop.services.defaults import with_model_defaults

    config = ForgetConfig(
        concepts=[args.concept],
        concept_kind="identity",
        mode=mode,
        steps=args.steps if mode == "faithful" else args.fast_steps,
        num_references=args.references,
        batch_size=args.batch_size,
    )
    config = with_model_defaults(model, config)
    return forget(model.pipe, config, model.fingerprint or "", model.family).patch


def correct_patch(model, args):
    from fmn_desktop.correct import CorrectConfig
    from fmn_desktop.correct.closed_form import correct
    from fmn_desktop.services.defaults import preservation_prompts

    config = CorrectConfig(concept=args.concept, guide=args.guide)
    config.preserve_prompts = preservation_prompts(model, None, [args.concept])
    return correct(model.pipe, config, model.fingerprint or "", model.family).patch


def broad_patch(model, args):
    from fmn_desktop.correct.broad import BroadConfig, erase_broad
    from fmn_desktop.services.defaults import preservation_prompts
    from fmn_desktop.toyworld.concepts import UNSAFE_WORDS

    config = BroadConfig(
        words=list(UNSAFE_WORDS), steps=args.broad_steps, num_references=args.references
    )
    config.preserve_prompts = preservation_prompts(model, None, list(UNSAFE_WORDS))
    return erase_broad(model.pipe, config, model.fingerprint or "", model.family).patch


def invert_vectors(model, args, images):
    from fmn_desktop.inversion.train import learn_tokens

    result = learn_tokens(model.pipe, images, steps=args.invert_steps, seed=0)
    return result


def subject_images(args) -> torch.Tensor:
    """Images of the concept drawn once by the fp32 model: the photos inversion learns from."""
    from fmn_desktop.services.model import open_model

    pipe = open_model("default").pipe
    gens = [torch.Generator("cpu").manual_seed(100 + i) for i in range(args.photos)]
    return (
        pipe(
            [f"a photo of {args.concept}"] * args.photos,
            num_inference_steps=20,
            guidance_scale=5.0,
            generator=gens,
            output_type="pt",
        ).images
        * 2
        - 1
    )


def scores(model, patch, args, concept_name: str) -> dict:
    """M-Score and retention after the patch, on the model it was made on."""
    from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.toyworld import CONCEPTS, load_judge

    judge = load_judge()
    concept = CONCEPTS[concept_name]
    others = [c for c in CONCEPTS.values() if c.name != concept_name]
    with PatchedUNet(model.pipe.unet, [(patch, 1.0)], fingerprint=model.fingerprint):
        images = generate_eval_set(
            model.pipe, judge, [concept], EvalSettings(seeds=args.seeds, steps=args.eval_steps)
        ) + generate_eval_set(
            model.pipe, judge, others, EvalSettings(seeds=1, steps=args.eval_steps)
        )
    return {
        "mscore_after": mscore(images, concept).mean,
        "retention_after": retention(images, [concept_name]).mean,
    }


def patch_vector(patch) -> torch.Tensor:
    """The patch's deltas laid end to end (LoRA pairs multiplied out), fp32."""
    parts = []
    for name in sorted(patch.deltas):
        d = patch.deltas[name]
        if d.dense is not None:
            parts.append(d.dense.float().flatten())
        else:
            up, down = d.up.float().flatten(1), d.down.float().flatten(1)
            parts.append((up @ down * (d.alpha / up.shape[1])).flatten())
    return torch.cat(parts)


def run_one(job: str, dtype: str, args, images) -> dict:
    from fmn_desktop.services.model import open_model

    model = open_model("default", precision=dtype, half_on_cpu=True)
    torch.manual_seed(0)
    trace = DeltaTrace(keep=True)
    started = time.perf_counter()
    out: dict = {"job": job, "dtype": dtype}
    with watch_steps(trace):
        if job in ("forget", "fast"):
            patch = forget_patch(model, args, "faithful" if job == "forget" else "fast")
        elif job == "correct":
            patch = correct_patch(model, args)
        elif job == "broad":
            patch = broad_patch(model, args)
        else:
            result = invert_vectors(model, args, images)
            patch = None
            out["loss_before_after"] = [result.loss_before, result.loss_after]
    out["seconds"] = round(time.perf_counter() - started, 1)
    if job == "correct":
        trace.deltas = [patch_vector(patch)]
        trace.norms = [float(trace.deltas[0].norm())]
    out["norms"] = trace.norms
    out["zero_grads"] = trace.zero_grads
    out["frozen"] = trace.frozen if trace.deltas and job != "correct" else None
    if job in ("forget", "fast", "correct") and not args.no_scores:
        out.update(scores(model, patch, args, args.concept))
        out["seconds_scores"] = round(time.perf_counter() - started - out["seconds"], 1)
    return out, trace.deltas


def compare(runs: dict, deltas: dict) -> None:
    """Adds each half run's step-by-step relative distance to the fp32 run's delta."""
    for (job, dtype), run in runs.items():
        ref = deltas.get((job, "fp32"))
        mine = deltas[(job, dtype)]
        if dtype == "fp32" or ref is None:
            continue
        run["rel_diff"] = [
            float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(mine, ref)
        ]


def table(runs: dict) -> str:
    lines = [
        "| job | dtype | steps | final ‖Δ‖ | ‖Δ‖ / fp32's | rel. diff to fp32 (final / max) "
        "| zero-grad share (max) | Δ entries still 0 | M-Score after | retention after "
        "| Δ retention vs fp32 (pts) | job s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (job, dtype), r in runs.items():
        ref = runs.get((job, "fp32"), {})
        ratio = r["norms"][-1] / ref["norms"][-1] if ref.get("norms") else float("nan")
        rel = r.get("rel_diff")
        rel_s = f"{rel[-1]:.4f} / {max(rel):.4f}" if rel else "-"
        zg = f"{max(r['zero_grads']):.4f}" if r["zero_grads"] else "-"
        fr = f"{r['frozen']:.4f}" if r.get("frozen") is not None else "-"
        ms = f"{r['mscore_after']:.3f}" if "mscore_after" in r else "-"
        ret = f"{r['retention_after']:.3f}" if "retention_after" in r else "-"
        dret = (
            f"{100 * (r['retention_after'] - ref['retention_after']):+.1f}"
            if "retention_after" in r and "retention_after" in ref
            else "-"
        )
        lines.append(
            f"| {job} | {dtype} | {len(r['norms'])} | {r['norms'][-1]:.4g} | {ratio:.4f} "
            f"| {rel_s} | {zg} | {fr} | {ms} | {ret} | {dret} | {r['seconds']} |"
        )
    return "\n".join(lines)


def per_step(runs: dict, job: str, every: int) -> str:
    dtypes = [d for d in DTYPES if (job, d) in runs]
    if not dtypes:
        return ""
    head = "| step | " + " | ".join(f"‖Δ‖ {d}" for d in dtypes)
    head += " | " + " | ".join(f"rel. diff {d}" for d in dtypes if d != "fp32") + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(dtypes) - ("fp32" in dtypes))]
    n = len(runs[(job, dtypes[0])]["norms"])
    for i in sorted({*range(0, n, every), n - 1}):
        cells = [f"{runs[(job, d)]['norms'][i]:.4f}" for d in dtypes]
        cells += [
            f"{runs[(job, d)]['rel_diff'][i]:.4f}"
            for d in dtypes
            if d != "fp32" and "rel_diff" in runs[(job, d)]
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--concept", default="Zorbu")
    p.add_argument("--guide", default="Quilla", help="what the correction turns the concept into")
    p.add_argument("--steps", type=int, default=30, help="faithful forget steps")
    p.add_argument("--fast-steps", type=int, default=15, help="fast mode steps per layer")
    p.add_argument("--broad-steps", type=int, default=20)
    p.add_argument("--invert-steps", type=int, default=30)
    p.add_argument("--photos", type=int, default=4, help="images inversion learns from")
    p.add_argument("--references", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt of the concept")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--no-scores", action="store_true")
    p.add_argument("--every", type=int, default=5, help="rows of the per-step table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/half_precision.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fmn_desktop.runtime import configure_runtime

    configure_runtime()
    images = subject_images(args) if "invert" in args.jobs else None
    runs, deltas = {}, {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for job in args.jobs:
        for dtype in ["fp32", *[d for d in args.dtypes if d != "fp32"]]:
            run, vecs = run_one(job, dtype, args, images)
            runs[(job, dtype)], deltas[(job, dtype)] = run, vecs
            compare(runs, deltas)
            scored = (
                f", M-Score {run['mscore_after']:.3f}, retention {run['retention_after']:.3f}"
                if "mscore_after" in run
                else ""
            )
            print(f"{job} {dtype}: {run['seconds']} s, ||delta|| {run['norms'][-1]:.4g}{scored}")
            # Written after every run: a long sweep cut short keeps what it measured.
            doc = {"torch": torch.__version__, "settings": vars(args), "runs": list(runs.values())}
            out.write_text(json.dumps(doc, indent=1))
            print(table(runs), flush=True)
    for job in args.jobs:
        if job != "correct":
            print(f"\n{job}, per step:\n" + per_step(runs, job, args.every))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

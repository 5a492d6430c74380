"""Held-out accuracy of judges on world and off-world images of a seed never used in training
(the trainer's judge stage draws seeds 2-5): clean world images, their VAE reconstructions
(the shipped VAE), empty backgrounds, and faint, partial and blended subjects and blended
styles (`world.draw_offworld`, soft targets).

    OMP_NUM_THREADS=1 python experiments/judge_heldout.py --judge old=/tmp/old/judge.safetensors \\
        --judge new=fmn_desktop/toyworld/weights/judge.safetensors --out runs/judge_heldout.json

Per judge, set and head:

- ``acc``: the most probable label is the target's majority label (a label with > 0.5 of the
  target; readings without one are left out), "unsure" counting as wrong;
- ``sure_single``: on readings whose target is even (no label above 0.65), the share read as
  one label with probability >= the threshold (lower is better);
- for ``empty``: ``says_none``: object and identity both read "none" (sure), per image.

The threshold is each judge's own calibrated one (`Judge.abstain`; 0 for a judge without
one: never unsure), 0 (``argmax``: the most probable label, never unsure) and, for comparison,
the one given by --threshold for every judge.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.runtime import set_threads
from fmn_desktop.toyworld import WEIGHTS_DIR
from fmn_desktop.toyworld.judge import Judge, read
from fmn_desktop.toyworld.world import HEADS, OFFWORLD_KINDS, World

SETS = (
    "clean",
    "vae",
    "empty",
    "empty_vae",
    "faint",
    "partial",
    "blend",
    "blend_vae",
    "style_blend",
)


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, bs: int = 250) -> torch.Tensor:
    outs = []
    for i in range(0, len(x), bs):
        z = vae.encode(x[i : i + bs] * 2 - 1).latent_dist.mean
        outs.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    # as a generated image reaches the judge: 8-bit
    return (torch.cat(outs) * 255).round() / 255


def draw_sets(seed: int, n: int, n_off: int, vae) -> dict[str, tuple[torch.Tensor, dict]]:
    world = World()

    def tensor(images):
        return torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2).contiguous()

    images, _, idx = world.batch(seed, 0, n, judge=True)
    clean_t = {
        h: torch.nn.functional.one_hot(torch.from_numpy(idx[h]), len(v)).float()
        for h, v in HEADS.items()
    }
    sets = {"clean": (tensor(images), clean_t)}
    for k, kind in enumerate(OFFWORLD_KINDS):
        # distinct index ranges per kind: samples of one (seed, index) share their draws
        imgs, _, targets = world.batch_offworld(seed, 100_000 * (k + 1), n_off, kind=kind)
        sets[kind] = (tensor(imgs), {h: torch.from_numpy(t) for h, t in targets.items()})
    for name in ("clean", "empty", "blend"):
        x, t = sets[name]
        sets["vae" if name == "clean" else f"{name}_vae"] = (reconstruct(vae, x), t)
    return {s: sets[s] for s in SETS}


def measure(judge: Judge, x: torch.Tensor, targets: dict, thresholds: dict[str, float]) -> dict:
    probs = judge.predict(x)
    out: dict = {}
    for h in HEADS:
        t, p = targets[h], probs[h]
        top, arg = p.max(-1)
        majority = t.max(-1).values > 0.5
        even = t.max(-1).values <= 0.65
        row = {}
        for tag, thr in thresholds.items():
            ok = (arg == t.argmax(-1)) & (top >= thr)
            row[f"acc@{tag}"] = float(ok[majority].float().mean()) if majority.any() else None
            row[f"sure_single@{tag}"] = (
                float((top[even] >= thr).float().mean()) if even.any() else None
            )
        row["n_majority"], row["n_even"] = int(majority.sum()), int(even.sum())
        out[h] = row
    for tag, thr in thresholds.items():
        obj = read(probs["object"], "object", thr)
        ident = read(probs["identity"], "identity", thr)
        out[f"says_none@{tag}"] = float(
            np.mean([a == "none" and b == "none" for a, b in zip(obj, ident, strict=True)])
        )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--judge",
        action="append",
        default=[],
        help="NAME=PATH (repeatable; default: the shipped judge as 'shipped')",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n", type=int, default=2000, help="clean world images")
    ap.add_argument("--n-off", type=int, default=500, help="images per off-world kind")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    set_threads(1)
    from diffusers import AutoencoderKL

    t0 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(WEIGHTS_DIR / "vae", local_files_only=True).eval()
    sets = draw_sets(args.seed, args.n, args.n_off, vae)
    judges = dict(j.split("=", 1) for j in args.judge) or {
        "shipped": str(WEIGHTS_DIR / "judge.safetensors")
    }
    result = {"seed": args.seed, "n": args.n, "n_off": args.n_off, "judges": {}}
    for name, path in judges.items():
        judge = Judge.load(path)
        thresholds = {"own": judge.abstain, "argmax": 0.0, "fixed": args.threshold}
        result["judges"][name] = {
            "path": path,
            "abstain": judge.abstain,
            "sets": {s: measure(judge, x, t, thresholds) for s, (x, t) in sets.items()},
        }
    result["seconds"] = time.perf_counter() - t0
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print_table(result)


def print_table(result: dict) -> None:
    names = list(result["judges"])
    for tag in ("own", "argmax", "fixed"):
        print(f"\naccuracy (threshold: {tag}), " + " | ".join(names))
        for s in SETS:
            cells = []
            for h in HEADS:
                vals = [result["judges"][n]["sets"][s][h][f"acc@{tag}"] for n in names]
                cells.append(f"{h} " + "/".join("-" if v is None else f"{v:.3f}" for v in vals))
            none = "/".join(
                f"{result['judges'][n]['sets'][s][f'says_none@{tag}']:.3f}" for n in names
            )
            print(f"{s:12s} " + "  ".join(cells) + f"  says_none {none}")
        print(f"sure single label on even targets (threshold: {tag})")
        for s in SETS:
            cells = []
            for h in HEADS:
                vals = [result["judges"][n]["sets"][s][h][f"sure_single@{tag}"] for n in names]
                if vals[0] is not None:
                    cells.append(f"{h} " + "/".join(f"{v:.3f}" for v in vals))
            if cells:
                print(f"{s:12s} " + "  ".join(cells))


if __name__ == "__main__":
    main()

"""Choose forget defaults by measuring on the embedded model: M-Score of the forgotten concept
and retention of the others, for a grid of settings, on a few concepts of each kind.

    python experiments/sweep_defaults.py --concepts circle Zorbu stripes --seeds 4 \
        --grid '[{"steps": 35}, {"steps": 35, "positions": "concept"}]' --out runs/sweep.json

Each setting's row: concept, settings, M-Score before/after, retention before/after, seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
from fmn_desktop.models.families import EMBEDDED_FAMILY
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import forget
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import demo_config
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS, load_judge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", nargs="+", default=["circle", "Zorbu", "stripes"])
    ap.add_argument("--grid", default="[{}]", help="JSON list of ForgetConfig overrides")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--model", default="default", help="'default' or a pipeline folder")
    ap.add_argument("--judge", default=None, help="judge weights (default: the shipped judge)")
    ap.add_argument("--out", default="runs/sweep.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    model = open_model(args.model)
    model.mark_embedded()
    judge = load_judge(args.judge)
    settings = EvalSettings(seeds=args.seeds)
    concepts = list(CONCEPTS.values())
    t0 = time.perf_counter()
    base = generate_eval_set(model.pipe, judge, concepts, settings)
    print(f"base eval set: {len(base)} images in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.concepts:
        target = CONCEPTS[name]
        m0, r0 = mscore(base, target), retention(base, [name])
        for overrides in json.loads(args.grid):
            config = demo_config(target)
            for key, value in overrides.items():
                setattr(config, key, value)
            config.__post_init__()
            t1 = time.perf_counter()
            result = forget(
                model.pipe, config, fingerprint=model.fingerprint or "", family=EMBEDDED_FAMILY
            )
            seconds = time.perf_counter() - t1
            with PatchedUNet(model.pipe.unet, [(result.patch, 1.0)]):
                after = generate_eval_set(model.pipe, judge, concepts, settings)
            m1, r1 = mscore(after, target), retention(after, [name])
            row = {
                "concept": name,
                "overrides": overrides,
                "mscore_before": m0.mean,
                "mscore_after": m1.mean,
                "retention_before": r0.mean,
                "retention_after": r1.mean,
                "mscore_after_ci": [m1.low, m1.high],
                "retention_after_ci": [r1.low, r1.high],
                "forget_seconds": round(seconds, 1),
            }
            rows.append(row)
            print(
                f"{name:10} {json.dumps(overrides):60} M {m0.mean:.3f}->{m1.mean:.3f}  "
                f"ret {r0.mean:.3f}->{r1.mean:.3f}  {seconds:.1f}s",
                flush=True,
            )
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

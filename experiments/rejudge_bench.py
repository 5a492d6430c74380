"""ConceptBench items (`fmn bench`'s job and defaults) read by several judges on the same images:
M-Score before/after and retention before/after per item and judge.

    OMP_NUM_THREADS=1 python experiments/rejudge_bench.py --seeds 2 --only circle --only Gorvak \\
        --judge old=/tmp/old/judge.safetensors --judge new=fmn_desktop/toyworld/weights/judge.safetensors
"""

import argparse
import json
import time
from pathlib import Path

from judges import JudgePanel

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.evaluate.bench import _mscore_of, default_items
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, retention
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import forget
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import demo_config, toy_preserve_prompts
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--judge", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    set_threads(1)
    t0 = time.perf_counter()
    model = open_model("default")
    panel = JudgePanel.from_specs(args.judge)
    items = [i for i in default_items() if not args.only or i.name in args.only]
    settings = EvalSettings(seeds=args.seeds)
    concepts = list(CONCEPTS.values())
    base = panel.relabel(generate_eval_set(model.pipe, panel, concepts, settings))
    result = {}
    for item in items:
        config = demo_config(CONCEPTS[item.concepts[0]])
        config.concepts = list(item.concepts)
        config.preserve_prompts = toy_preserve_prompts(item.concepts)
        started = time.perf_counter()
        patch = forget(model.pipe, config, fingerprint=model.fingerprint or "", family="toy").patch
        seconds = time.perf_counter() - started
        with PatchedUNet(model.pipe.unet, [(patch, 1.0)]):
            after = panel.relabel(generate_eval_set(model.pipe, panel, concepts, settings))
        result[item.name] = {"forget_seconds": round(seconds, 1)}
        for name in panel.judges:
            row = {
                "mscore_before": _mscore_of(base[name], item.concepts).as_dict(),
                "mscore_after": _mscore_of(after[name], item.concepts).as_dict(),
                "retention_before": retention(base[name], item.concepts).as_dict(),
                "retention_after": retention(after[name], item.concepts).as_dict(),
            }
            result[item.name][name] = row
            print(
                f"[{time.perf_counter() - t0:.0f}s] {item.name} judge {name}: M-Score "
                + " -> ".join(
                    f"{row[k]['mean']:.3f} [{row[k]['low']:.2f}, {row[k]['high']:.2f}]"
                    for k in ("mscore_before", "mscore_after")
                )
                + ", retention "
                + " -> ".join(
                    f"{row[k]['mean']:.3f} [{row[k]['low']:.2f}, {row[k]['high']:.2f}]"
                    for k in ("retention_before", "retention_after")
                ),
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

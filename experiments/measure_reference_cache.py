"""A forget job's time without the reference cache, with it empty (first run) and with it
filled (a second run with the same settings), and the share of each job the reference images
take: on the embedded model (the `fmn forget` defaults) and on the SD1.5 architecture with
random weights (bench/bench_forget.py's pipeline; `--size` below 512 for a CPU).

    OMP_NUM_THREADS=2 python experiments/measure_reference_cache.py --arch embedded
    OMP_NUM_THREADS=2 python experiments/measure_reference_cache.py --arch sd1 --size 256 \
        --modes fast --num-references 4 --reference-steps 10 --steps 5

Each job is timed from its start to its result, in wall time and in this process's CPU time
(user + system, all threads: steadier than wall time on a shared machine); "references" is
the time until its last reference image is in (generation, or reading the cache and
fingerprinting the model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def timed_job(pipe, config, cache) -> dict:
    from fmn_desktop.resteer import forget_steps

    started, cpu0 = time.perf_counter(), time.process_time()
    refs_done, refs_cpu = started, cpu0
    job = forget_steps(pipe, config, cache=cache)
    try:
        while True:
            p = next(job)
            if p.phase == "references":
                refs_done, refs_cpu = time.perf_counter(), time.process_time()
    except StopIteration as stop:
        result = stop.value
    return {
        "total_s": time.perf_counter() - started,
        "references_s": refs_done - started,
        "total_cpu_s": time.process_time() - cpu0,
        "references_cpu_s": refs_cpu - cpu0,
        "patch": result.patch,
    }


def same(p, q) -> bool:
    return p.deltas.keys() == q.deltas.keys() and all(
        torch.equal(a.to_dense(), q.deltas[n].to_dense()) for n, a in p.deltas.items()
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("embedded", "sd1"), default="embedded")
    ap.add_argument("--modes", nargs="+", default=["fast", "faithful"])
    ap.add_argument("--concept", default="Zorbu")
    ap.add_argument("--size", type=int, default=512, help="sd1: image size")
    ap.add_argument("--num-references", type=int, default=None)
    ap.add_argument("--reference-steps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--skip-uncached",
        action="store_true",
        help="leave out the run without a cache (the first run draws the same images)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fmn_desktop.resteer import ForgetConfig
    from fmn_desktop.resteer.refcache import ReferenceCache

    if args.arch == "embedded":
        from fmn_desktop.services.defaults import demo_config
        from fmn_desktop.services.model import open_model
        from fmn_desktop.toyworld import CONCEPTS

        pipe = open_model("default").pipe

        def config(mode):
            return demo_config(CONCEPTS[args.concept], args.steps, mode)
    else:
        from bench_forget import random_pipeline

        pipe = random_pipeline("sd1", "cpu", torch.float32)
        factor = pipe.vae_scale_factor
        pipe.unet.register_to_config(sample_size=args.size // factor)

        def config(mode):
            kw = {"steps": args.steps} if args.steps else {}
            return ForgetConfig(concepts=["castle"], mode=mode, **kw)

    rows = []
    for mode in args.modes:
        cfg = config(mode)
        if args.num_references:
            cfg.num_references = args.num_references
        if args.reference_steps:
            cfg.reference_steps = args.reference_steps
        with tempfile.TemporaryDirectory() as tmp:
            runs = {} if args.skip_uncached else {"no cache": timed_job(pipe, cfg, None)}
            runs["first run (cache empty)"] = timed_job(pipe, cfg, ReferenceCache(tmp))
            runs["second run (cache filled)"] = timed_job(pipe, cfg, ReferenceCache(tmp))
        plain = runs.get("no cache", runs["first run (cache empty)"])
        exact = same(plain["patch"], runs["second run (cache filled)"]["patch"])
        for name, r in runs.items():
            row = {
                "arch": args.arch,
                "mode": mode,
                "run": name,
                "steps": cfg.steps,
                "references": cfg.num_references,
                "reference_steps": cfg.reference_steps,
                "total_s": round(r["total_s"], 2),
                "references_s": round(r["references_s"], 2),
                "share": round(r["references_s"] / r["total_s"], 3),
                "total_cpu_s": round(r["total_cpu_s"], 2),
                "references_cpu_s": round(r["references_cpu_s"], 2),
                "cpu_share": round(r["references_cpu_s"] / r["total_cpu_s"], 3),
                "patch_equal_to_uncached": exact,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

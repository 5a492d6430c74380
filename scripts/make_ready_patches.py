"""Make the ready-made patches of the embedded model in `patches/`, with their manifest.

    python scripts/make_ready_patches.py [--seeds 4] [--threads 1]

Forgets one identity, one object and one style with the default settings, measures each
patch on the embedded model (M-Score of the concept and retention of the others, before and
after, with 95% intervals), stores the scores in the patch metadata and writes
`patches/manifest.json` (file, sha256, concept, kind, base fingerprint, scores, settings).
`tests/patch/test_ready_patches.py` checks the files against the manifest and the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from datetime import date
from pathlib import Path

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
from fmn_desktop.patch import PatchedUNet, save_patch
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import demo_config, toy_preserve_prompts
from fmn_desktop.services.forget import forget_to_file
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS, load_judge

READY = [("Zorbu", "identity"), ("circle", "object"), ("stripes", "style")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4, help="seeds per evaluation prompt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default="patches")
    args = ap.parse_args()
    set_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = open_model("default")
    judge = load_judge()
    settings = EvalSettings(seeds=args.seeds)
    concepts = list(CONCEPTS.values())
    base = generate_eval_set(model.pipe, judge, concepts, settings)
    entries = []
    for name, kind in READY:
        target = CONCEPTS[name]
        config = demo_config(target)
        config.preserve_prompts = toy_preserve_prompts([name])
        path = out_dir / f"forget-{name}.safetensors"
        t0 = time.perf_counter()
        outcome = forget_to_file(model, config, path)
        seconds = time.perf_counter() - t0
        with PatchedUNet(model.pipe.unet, [(outcome.patch, 1.0)], fingerprint=model.fingerprint):
            after = generate_eval_set(model.pipe, judge, concepts, settings)
        scores = {
            "mscore_before": mscore(base, target).as_dict(),
            "mscore_after": mscore(after, target).as_dict(),
            "retention_before": retention(base, [name]).as_dict(),
            "retention_after": retention(after, [name]).as_dict(),
            "eval_seeds": args.seeds,
            "retention_seeds": args.seeds,
        }
        outcome.patch.meta.scores = scores
        save_patch(outcome.patch, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append(
            {
                "file": path.name,
                "sha256": digest,
                "concept": name,
                "kind": kind,
                "patch_kind": "forget",
                "method": outcome.patch.meta.method,
                "base_fingerprint": model.fingerprint,
                "scores": scores,
                "forget_seconds": round(seconds, 1),
                "settings": outcome.patch.meta.hyperparameters,
            }
        )
        m0, m1 = scores["mscore_before"]["mean"], scores["mscore_after"]["mean"]
        r0, r1 = scores["retention_before"]["mean"], scores["retention_after"]["mean"]
        print(
            f"{name}: M {m0:.3f} -> {m1:.3f}, retention {r0:.3f} -> {r1:.3f} ({seconds:.1f} s)",
            flush=True,
        )
    manifest = {
        "model": "embedded default (fmn_desktop.toyworld)",
        "made": date.today().isoformat(),
        "command": f"python scripts/make_ready_patches.py --seeds {args.seeds}",
        "patches": entries,
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out_dir / "manifest.json")


if __name__ == "__main__":
    main()

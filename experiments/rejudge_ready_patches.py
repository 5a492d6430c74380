"""Re-measure the ready-made patches' scores (`patches/manifest.json`) with other judges: the
same evaluation images as `scripts/make_ready_patches.py` (every concept's prompts, the same
seeds, base and each patch applied), read by every judge given; the patches are not retrained.

    OMP_NUM_THREADS=1 python experiments/rejudge_ready_patches.py \\
        --judge old=/tmp/old/judge.safetensors --judge new=fmn_desktop/toyworld/weights/judge.safetensors

With --write, the last judge's scores replace those in each patch file's metadata (the tensors
are kept byte for byte) and in the manifest (with the new sha256); --from-json takes the
scores from an earlier run's --out file instead of measuring again.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

from judges import JudgePanel

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
from fmn_desktop.fileio import atomic_write_bytes
from fmn_desktop.patch import PatchedUNet, load_patch, unet_module_names
from fmn_desktop.patch.format import read_tensors
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS


def scores_of(base, after, target, seeds) -> dict:
    return {
        "mscore_before": mscore(base, target).as_dict(),
        "mscore_after": mscore(after, target).as_dict(),
        "retention_before": retention(base, [target.name]).as_dict(),
        "retention_after": retention(after, [target.name]).as_dict(),
        "eval_seeds": seeds,
        "retention_seeds": seeds,
    }


def rewrite_scores(path: Path, scores: dict) -> str:
    """Replace the scores in a patch file's metadata; returns the new sha256."""
    from safetensors.torch import save

    tensors, meta = read_tensors(path)
    keys = [k for k in meta if k.endswith("scores")]
    if len(keys) != 1:
        raise SystemExit(f"{path}: expected one scores entry in the metadata, got {keys}")
    meta[keys[0]] = json.dumps(scores, sort_keys=True)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--dir", default="patches")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", default="")
    ap.add_argument("--from-json", default="", help="scores of an earlier run (its --out)")
    args = ap.parse_args()
    set_threads(1)
    t0 = time.perf_counter()
    folder = Path(args.dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        write(folder, manifest, result, list(next(iter(result.values())))[-1])
        return
    seeds = manifest["patches"][0]["scores"]["eval_seeds"]
    model = open_model("default")
    panel = JudgePanel.from_specs(args.judge)
    settings = EvalSettings(seeds=seeds)
    concepts = list(CONCEPTS.values())
    base = panel.relabel(generate_eval_set(model.pipe, panel, concepts, settings))
    print(f"[{time.perf_counter() - t0:.0f}s] base: {len(base[panel.first])} images", flush=True)
    result = {}
    names = list(panel.judges)
    for entry in manifest["patches"]:
        target = CONCEPTS[entry["concept"]]
        patch = load_patch(folder / entry["file"], unet_module_names(model.pipe.unet))
        with PatchedUNet(model.pipe.unet, [(patch, 1.0)], fingerprint=model.fingerprint):
            after = panel.relabel(generate_eval_set(model.pipe, panel, concepts, settings))
        result[entry["concept"]] = {n: scores_of(base[n], after[n], target, seeds) for n in names}
        for n in names:
            s = result[entry["concept"]][n]
            print(
                f"[{time.perf_counter() - t0:.0f}s] {entry['concept']} judge {n}: M-Score "
                f"{s['mscore_before']['mean']:.4f} -> {s['mscore_after']['mean']:.4f}, "
                f"retention {s['retention_before']['mean']:.4f} -> "
                f"{s['retention_after']['mean']:.4f} (n {s['retention_after']['n']})",
                flush=True,
            )
        print(
            f"  manifest: M-Score {entry['scores']['mscore_before']['mean']:.4f} -> "
            f"{entry['scores']['mscore_after']['mean']:.4f}, retention "
            f"{entry['scores']['retention_before']['mean']:.4f} -> "
            f"{entry['scores']['retention_after']['mean']:.4f}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.write:
        write(folder, manifest, result, names[-1])
    print(f"done in {time.perf_counter() - t0:.0f}s")


def write(folder: Path, manifest: dict, result: dict, judge: str) -> None:
    for entry in manifest["patches"]:
        scores = result[entry["concept"]][judge]
        entry["scores"] = scores
        entry["sha256"] = rewrite_scores(folder / entry["file"], scores)
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(folder / "manifest.json")
    print(f"wrote judge {judge}'s scores into {folder}", flush=True)


if __name__ == "__main__":
    main()

"""Measure broad removal on prompts that do not name the unsafe stand-in.

    OMP_NUM_THREADS=1 python experiments/measure_uncaptioned_unsafe.py --seeds 4 \
        --guidance 1 2 5 --out runs/uncaptioned.json

In the toy world 15% of images carry the hazard frame and 30% of those have no unsafe word in
their caption, so the frame belongs to about 5% of word-free captions. Classifier-free guidance
pushes samples away from what the unconditional model draws more often than the conditional
one, which is why at guidance 5 the base model drew no frame on word-free prompts (0/96). This
script counts frames (judge's unsafe head) on world captions without any unsafe word, at
several guidance scales, for the base model and for the broad-removal patch trained on
"cursed" and "toxic" with the defaults (`fmn erase-broad`), and writes counts with 95% Wilson
intervals.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.correct.broad import BroadConfig, erase_broad
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, wilson
from fmn_desktop.models.families import EMBEDDED_FAMILY
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import preservation_prompts, toy_preserve_prompts
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import load_judge
from fmn_desktop.toyworld.world import UNSAFE_WORDS


@dataclass
class PromptSet:
    """What `generate_eval_set` needs of a concept: a name and its prompts."""

    name: str
    items: list[str]

    def prompts(self) -> list[str]:
        return self.items


def frames(pipe, judge, prompts: PromptSet, seeds: int, guidance: float) -> dict:
    images = generate_eval_set(pipe, judge, [prompts], EvalSettings(seeds=seeds, guidance=guidance))
    framed = [img.prompt for img in images if int(img.probs["unsafe"].argmax()) == 1]
    hits = len(framed)
    return {
        "frames": hits,
        "images": len(images),
        **wilson(hits, len(images)).as_dict(),
        "framed_prompts": framed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=96, help="word-free world captions")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    ap.add_argument("--words", nargs="+", default=["cursed", "toxic"], help="trained words")
    ap.add_argument(
        "--no-hold",
        action="store_true",
        help="train without holding the unconditional prediction (no unconditional hold)",
    )
    ap.add_argument(
        "--preserve-weight",
        type=float,
        default=None,
        help='BroadConfig.preserve_weight (captions and the held ""; default: its own)',
    )
    ap.add_argument("--no-base", action="store_true", help="skip the base model's counts")
    ap.add_argument(
        "--preserve-count",
        type=int,
        default=None,
        help="world captions held in place (default: fmn erase-broad's)",
    )
    ap.add_argument(
        "--ordinary-references",
        type=int,
        default=None,
        help="BroadConfig.ordinary_references (0: hold only on the attribute's "
        "references; default: its own)",
    )
    ap.add_argument(
        "--uncaptioned-weight",
        type=float,
        default=None,
        help="BroadConfig.uncaptioned_weight (the word-less prompts' term)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/uncaptioned.json")
    args = ap.parse_args()
    set_threads(args.threads)
    t0 = time.perf_counter()
    model = open_model("default")
    judge = load_judge()
    pipe = model.pipe
    free = PromptSet(
        "word-free", toy_preserve_prompts(list(UNSAFE_WORDS), count=args.prompts, seed=777)
    )
    named = PromptSet("hexed", [f"a hexed {o}" for o in ("circle", "square", "ring", "cross")])
    report: dict = {
        "prompts": free.items,
        "seeds": args.seeds,
        "words": args.words,
        "hold_unconditional": not args.no_hold,
        "preserve_weight": args.preserve_weight,
        "preserve_count": args.preserve_count,
        "ordinary_references": args.ordinary_references,
    }

    def measure(tag: str) -> None:
        for g in args.guidance:
            report[f"{tag} word-free g{g:g}"] = frames(pipe, judge, free, args.seeds, g)
            report[f"{tag} hexed g{g:g}"] = frames(pipe, judge, named, args.seeds, g)
            print(
                f"[{time.perf_counter() - t0:6.1f}s] {tag} guidance {g:g}: word-free "
                f"{report[f'{tag} word-free g{g:g}']['frames']}/"
                f"{report[f'{tag} word-free g{g:g}']['images']}, hexed "
                f"{report[f'{tag} hexed g{g:g}']['frames']}/"
                f"{report[f'{tag} hexed g{g:g}']['images']}",
                flush=True,
            )

    if not args.no_base:
        measure("base")
    # The preservation prompts `fmn erase-broad` uses (world captions without the words),
    # or more of them.
    if args.preserve_count:
        preserve = toy_preserve_prompts(args.words, count=args.preserve_count)
    else:
        preserve = preservation_prompts(model, None, args.words)
    report["preserve_prompts"] = preserve
    config = BroadConfig(
        words=args.words, preserve_prompts=preserve, hold_unconditional=not args.no_hold
    )
    if args.preserve_weight is not None:
        config.preserve_weight = args.preserve_weight
    if args.ordinary_references is not None:
        config.ordinary_references = args.ordinary_references
    if args.uncaptioned_weight is not None:
        config.uncaptioned_weight = args.uncaptioned_weight
    report["uncaptioned_weight"] = config.uncaptioned_weight
    result = erase_broad(pipe, config, model.fingerprint or "", EMBEDDED_FAMILY)
    report["train_seconds"] = round(result.seconds, 1)
    # Word-free captions the job held in place verbatim (the world's caption space is small):
    # counts over the others are the fair ones.
    report["held_verbatim"] = sorted(set(free.items) & set(preserve))
    with PatchedUNet(pipe.unet, [(result.patch, 1.0)], fingerprint=model.fingerprint):
        measure("after")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

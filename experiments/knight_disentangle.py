"""Measure `fmn disentangle` on the dominant/overshadowed pair: "knight" prompts draw Gorvak.
For each strength, train the disentangle patch (knight away from Gorvak, the product's job
and defaults) and count which identity the judge sees on the knight and Gorvak evaluation
prompts (16 seeds each) before and after, with retention of every other concept.
Several judges (--judge NAME=PATH, repeatable; see `judges.py`) read the same images; a judge
with an abstain threshold reads "unsure" under it.

    OMP_NUM_THREADS=1 python experiments/knight_disentangle.py --strength 3 4
"""

import argparse
import time
from collections import Counter

from judges import JudgePanel

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.correct.disentangle import DisentangleConfig
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, reading, retention
from fmn_desktop.models.families import EMBEDDED_FAMILY
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import forget
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import preservation_prompts, with_model_defaults
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS


def identities(images, concept):
    return Counter(reading(i, "identity") for i in images if i.concept == concept)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strength", type=float, nargs="+", default=[3.0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument(
        "--no-hold-dominant",
        action="store_true",
        help="do not hold Gorvak's own prompts (only the ordinary captions held)",
    )
    ap.add_argument("--no-base", action="store_true", help="skip the base model's counts")
    ap.add_argument("--anchor-weight", type=float, default=None, help="ForgetConfig's")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--judge", action="append", default=[], help="NAME=PATH (repeatable)")
    args = ap.parse_args()
    set_threads(1)
    t0 = time.perf_counter()
    model, judge = open_model("default"), JudgePanel.from_specs(args.judge)
    pair = [CONCEPTS["knight"], CONCEPTS["Gorvak"]]
    others = [c for c in CONCEPTS.values() if c.name not in ("knight", "Gorvak")]

    def measure(tag):
        pairs = judge.relabel(
            generate_eval_set(model.pipe, judge, pair, EvalSettings(seeds=args.seeds))
        )
        rest = judge.relabel(generate_eval_set(model.pipe, judge, others, EvalSettings(seeds=2)))
        print(f"[{time.perf_counter() - t0:5.0f}s] {tag}:", flush=True)
        for name in judge.judges:
            print(
                f"  judge {name}: knight prompts {dict(identities(pairs[name], 'knight'))}; "
                f"Gorvak prompts {dict(identities(pairs[name], 'Gorvak'))}; retention "
                f"{retention(rest[name], ['knight'])}",
                flush=True,
            )

    if not args.no_base:
        measure("base")
    preserve = preservation_prompts(model, None, ["knight", "Gorvak"])
    for s in args.strength:
        options = {} if args.anchor_weight is None else {"anchor_weight": args.anchor_weight}
        config = DisentangleConfig(
            "knight",
            "Gorvak",
            strength=s,
            steps=args.steps,
            hold_dominant=not args.no_hold_dominant,
            job_options=options,
        )
        job = with_model_defaults(model, config.forget_config(preserve))
        held = sorted(set(job.preserve_prompts) & {p for c in pair for p in c.prompts()})
        result = forget(model.pipe, job, model.fingerprint or "", EMBEDDED_FAMILY)
        with PatchedUNet(model.pipe.unet, [(result.patch, 1.0)]):
            measure(
                f"strength {s:g}, hold {config.hold_dominant}, anchor weight "
                f"{job.anchor_weight:g}, {job.steps} steps ({result.seconds:.0f} s; "
                f"evaluation prompts held verbatim: {held})"
            )


if __name__ == "__main__":
    main()

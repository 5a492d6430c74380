"""Broad removal on the embedded model: M-Score of each unsafe word and retention of every
other concept, before and after a patch trained on "cursed" and "toxic" with the defaults
(4 seeds per evaluation prompt). Figures: docs/research/CORRECTION_AND_BROAD.md.

    OMP_NUM_THREADS=1 python experiments/broad_retention.py [--preserve-weight W]
        [--uncaptioned-weight U]
"""

import argparse

import fmn_desktop  # noqa
from fmn_desktop.correct.broad import BroadConfig, erase_broad
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
from fmn_desktop.models.families import EMBEDDED_FAMILY
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import preservation_prompts
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS, concepts_of_kind, load_judge

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument(
    "--preserve-weight",
    type=float,
    default=None,
    help="BroadConfig.preserve_weight (also weighs the unconditional hold)",
)
ap.add_argument(
    "--uncaptioned-weight", type=float, default=None, help="BroadConfig.uncaptioned_weight"
)
args = ap.parse_args()
set_threads(1)
m = open_model("default")
judge = load_judge()
cs = list(CONCEPTS.values())
unsafe = list(concepts_of_kind("unsafe"))
words = ["cursed", "toxic"]
base = generate_eval_set(m.pipe, judge, cs, EvalSettings(seeds=4))
cfg = BroadConfig(words=words, preserve_prompts=preservation_prompts(m, None, words))
if args.preserve_weight is not None:
    cfg.preserve_weight = args.preserve_weight
if args.uncaptioned_weight is not None:
    cfg.uncaptioned_weight = args.uncaptioned_weight
r = erase_broad(m.pipe, cfg, m.fingerprint or "", EMBEDDED_FAMILY)
with PatchedUNet(m.pipe.unet, [(r.patch, 1.0)]):
    after = generate_eval_set(m.pipe, judge, cs, EvalSettings(seeds=4))
names = [c.name for c in unsafe]
for c in unsafe:
    print(c.name, mscore(base, c), "->", mscore(after, c))
print(f"preserve weight {cfg.preserve_weight:g}, uncaptioned weight {cfg.uncaptioned_weight:g}")
print(
    "retention",
    retention(base, names),
    "->",
    retention(after, names),
    "train s",
    round(r.seconds, 1),
)

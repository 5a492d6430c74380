"""Broad removal on the embedded model: M-Score of each unsafe word and retention of every
other concept, before and after a patch trained on "cursed" and "toxic" with the defaults
(4 seeds per evaluation prompt). Figures: docs/CORRECTION_AND_BROAD.md.

    OMP_NUM_THREADS=1 python scripts/diag/broad_retention.py [PRESERVE_WEIGHT]
"""

import sys

import fmn_desktop  # noqa
from fmn_desktop.correct.broad import BroadConfig, erase_broad
from fmn_desktop.correct.workflow import default_preserve_prompts
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.runtime import set_threads
from fmn_desktop.toyworld import CONCEPTS, concepts_of_kind, load_judge
from fmn_desktop.workflows import open_model

set_threads(1)
m = open_model("default")
judge = load_judge()
cs = list(CONCEPTS.values())
unsafe = list(concepts_of_kind("unsafe"))
words = ["cursed", "toxic"]
base = generate_eval_set(m.pipe, judge, cs, EvalSettings(seeds=4))
cfg = BroadConfig(words=words, preserve_prompts=default_preserve_prompts(m, None, words))
if len(sys.argv) > 1:  # preservation weight (also weighs the unconditional hold)
    cfg.preserve_weight = float(sys.argv[1])
r = erase_broad(m.pipe, cfg, m.fingerprint or "", "toy")
with PatchedUNet(m.pipe.unet, [(r.patch, 1.0)]):
    after = generate_eval_set(m.pipe, judge, cs, EvalSettings(seeds=4))
names = [c.name for c in unsafe]
for c in unsafe:
    print(c.name, mscore(base, c), "->", mscore(after, c))
print("retention", retention(base, names), "->", retention(after, names), "train s", round(r.seconds,1))

"""Disentangle the dominant/overshadowed pair with the anchor term: push "knight" prompts'
attn2 outputs past themselves, away from the same prompts with "Gorvak" in place of
"knight" (anchor "Gorvak", negative guidance, no re-steering), and count which identity the
judge sees on the knight and Gorvak prompts (16 seeds each) before and after, with retention.

    OMP_NUM_THREADS=1 python scripts/diag/knight_disentangle.py --guidance -4 -7
"""

import argparse
import time
from collections import Counter

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.demo import TOY_TEMPLATES, toy_retain_prompts
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, retention
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.runtime import set_threads
from fmn_desktop.toyworld import CONCEPTS, HEADS, load_judge
from fmn_desktop.workflows import open_model


def identities(images, concept):
    return Counter(HEADS["identity"][int(i.probs["identity"].argmax())]
                   for i in images if i.concept == concept)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guidance", type=float, nargs="+", default=[-4.0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--anchor-weight", type=float, default=3.0)
    args = ap.parse_args()
    set_threads(1)
    t0 = time.perf_counter()
    model, judge = open_model("default"), load_judge()
    pair = [CONCEPTS["knight"], CONCEPTS["Gorvak"]]
    others = [c for c in CONCEPTS.values() if c.name not in ("knight", "Gorvak")]

    def measure(tag):
        pairs = generate_eval_set(model.pipe, judge, pair, EvalSettings(seeds=args.seeds))
        rest = generate_eval_set(model.pipe, judge, others, EvalSettings(seeds=2))
        print(f"[{time.perf_counter() - t0:5.0f}s] {tag}: knight prompts "
              f"{dict(identities(pairs, 'knight'))}; Gorvak prompts "
              f"{dict(identities(pairs, 'Gorvak'))}; retention {retention(rest, ['knight'])}",
              flush=True)

    measure("base")
    for g in args.guidance:
        config = ForgetConfig(
            concepts=["knight"], kind="object", templates=TOY_TEMPLATES["generic"],
            anchor="Gorvak", anchor_guidance=g, anchor_weight=args.anchor_weight,
            resteer_weight=0.0, retain_prompts=toy_retain_prompts(["knight", "Gorvak"]),
        )
        result = forget(model.pipe, config, fingerprint=model.fingerprint or "", family="toy")
        with PatchedUNet(model.pipe.unet, [(result.patch, 1.0)]):
            measure(f"guidance {g:g} ({result.seconds:.0f} s)")


if __name__ == "__main__":
    main()

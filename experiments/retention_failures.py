"""Which retention checks fail after forgetting a concept with the defaults: per prompt and
attribute, the judge's reading where it disagrees with the prompt, before and after.

    OMP_NUM_THREADS=1 python experiments/retention_failures.py circle --seeds 2
"""

import argparse

import fmn_desktop  # noqa: F401  (offline mode)
from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, names_concept
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import forget
from fmn_desktop.runtime import set_threads
from fmn_desktop.services.defaults import demo_config
from fmn_desktop.services.model import open_model
from fmn_desktop.toyworld import CONCEPTS, HEADS, load_judge
from fmn_desktop.toyworld.concepts import expected_labels


def failures(images, forgotten):
    out = []
    for img in images:
        if names_concept(img.prompt, forgotten):
            continue
        for attr, label in expected_labels(img.prompt).items():
            got = HEADS[attr][int(img.probs[attr].argmax())]
            accepted = (
                CONCEPTS[label].accepted if attr == "identity" and label in CONCEPTS else (label,)
            )
            if got not in accepted:
                out.append((img.prompt, img.seed, attr, label, got))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("concept")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    set_threads(1)
    model, judge = open_model("default"), load_judge()
    concepts = list(CONCEPTS.values())
    settings = EvalSettings(seeds=args.seeds)
    base = generate_eval_set(model.pipe, judge, concepts, settings)
    patch = forget(model.pipe, demo_config(CONCEPTS[args.concept])).patch
    with PatchedUNet(model.pipe.unet, [(patch, 1.0)]):
        after = generate_eval_set(model.pipe, judge, concepts, settings)
    for tag, images in (("before", base), ("after", after)):
        rows = failures(images, args.concept)
        print(f"{tag}: {len(rows)} failed checks")
        for prompt, seed, attr, want, got in rows:
            print(f"  {prompt!r} seed {seed}: {attr} {want} -> {got}")


if __name__ == "__main__":
    main()

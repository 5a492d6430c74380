"""`fmn demo`: the two-minute tour on the embedded model.

Load the embedded model and its judge, draw a before grid, forget one concept with the
default settings, draw the after grid, print M-Score and retention before/after, and keep the
patch (with its scores in the metadata).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEMO_CONCEPT = "Zorbu"
KIND_TEMPLATES = {
    "object": "object",
    "identity": "identity",
    "style": "style",
    "colour": "object",
    "unsafe": "object",
    "generic": "object",
}

# Forget templates in the toy world's grammar, by concept kind. They vary the article, a
# colour or style around the concept so the edit holds wherever the word sits in a prompt;
# the evaluation templates (toyworld/concepts.py, e.g. "... in the style of plain") are left
# out on purpose, so the M-Score is measured on phrasings the job never saw verbatim.
TOY_TEMPLATES = {
    "object": [
        "a {}",
        "a photo of a {}",
        "a green {}",
        "a photo of a blue {}",
        "a {} in the style of dots",
        "a photo of a {} in the style of stripes",
    ],
    "colour": [
        "a {} ring",
        "a photo of a {} triangle",
        "a {} balloon in the style of dots",
        "a photo of a {} crescent in the style of stripes",
    ],
    "style": [
        "a photo in the style of {}",
        "a square in the style of {}",
        "a photo of a red ring in the style of {}",
        "Bramor in the style of {}",
    ],
    "identity": [
        "{}",
        "a photo of {}",
        "{} in the style of dots",
        "a photo of {} in the style of stripes",
        "{} in the style of checkers",
        "a photo of {} in the style of gradient",
    ],
    "unsafe": [
        "a {} triangle",
        "a photo of a {} ring",
        "{} Bramor",
        "a {} photo in the style of dots",
    ],
    "generic": ["a {}", "a photo of a {}", "a {} in the style of stripes"],
}


def toy_retain_prompts(forgotten: list[str], count: int = 96, seed: int = 4242) -> list[str]:
    """Ordinary prompts of the toy world that name none of `forgotten`: what the preservation
    term holds in place (the built-in real-world prompts mean nothing to the toy encoder).

    They are captions drawn by the world's own caption generator (a seed of their own), not
    the evaluation prompts, so retention is measured on prompts the job never held in place
    verbatim (a caption can coincide with an evaluation prompt by chance, as users' would)."""
    import numpy as np

    from fmn_desktop.evaluate.scores import names_concept
    from fmn_desktop.toyworld.world import (
        DOMINANT_IDENTITY,
        GENERIC_KNIGHT,
        World,
        caption_for,
    )

    world, rng = World(), np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(20 * count):
        if len(out) == count:
            break
        labels = world.draw_labels(rng)
        knight = labels.identity == GENERIC_KNIGHT or (
            labels.identity == DOMINANT_IDENTITY and rng.random() < world.GORVAK_AS_KNIGHT
        )
        caption = caption_for(labels, rng, knight_word=knight)
        if caption not in out and not any(names_concept(caption, f) for f in forgotten):
            out.append(caption)
    return out


def toy_defaults(config):
    """Fill what `config` (a ForgetConfig) leaves unset with the toy world's measured defaults:
    its captions as preservation prompts and, when every concept is one of the world's and of
    one kind, forget templates in its grammar (`TOY_TEMPLATES`)."""
    from fmn_desktop.toyworld import CONCEPTS

    if config.retain_prompts is None:
        config.retain_prompts = toy_retain_prompts(list(config.concepts))
    if config.templates is None and all(c in CONCEPTS for c in config.concepts):
        kinds = {CONCEPTS[c].kind for c in config.concepts}
        if len(kinds) == 1:
            config.templates = list(TOY_TEMPLATES[kinds.pop()])
    return config


def demo_config(concept, steps: int | None = None, mode: str = "faithful"):
    """The default forget settings for a toy-world concept."""
    from fmn_desktop.resteer import ForgetConfig

    kw = {} if steps is None else {"steps": steps}
    return toy_defaults(
        ForgetConfig(mode=mode, concepts=[concept.name], kind=KIND_TEMPLATES[concept.kind], **kw)
    )


def run_demo(
    concept: str | None = None,
    out_dir: Path = Path("fmn-demo"),
    steps: int | None = None,
    seeds: int = 8,
    other_seeds: int = 1,
    others_limit: int | None = None,
    out=sys.stdout,
) -> int:
    """The tour; `seeds` per prompt of the forgotten concept, `other_seeds` per prompt of the
    others (all of them, or the first `others_limit`) for retention."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.evaluate.scores import (
        EvalSettings,
        generate_eval_set,
        mscore,
        names_concept,
        retention,
    )
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.toyworld import CONCEPTS, load_judge
    from fmn_desktop.workflows import (
        forget_to_file,
        generate_images,
        grid_image,
        open_model,
        save_png,
        side_by_side,
    )

    t0 = time.perf_counter()
    name = concept or DEMO_CONCEPT
    if name not in CONCEPTS:
        raise FmnError(
            f"{name!r} is not a concept of the embedded model; known: "
            + ", ".join(sorted(CONCEPTS))
        )
    target = CONCEPTS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - t0:5.1f}s] {text}", file=out, flush=True)

    model = open_model("default")
    judge = load_judge()
    pipe = model.pipe
    say(f"loaded the embedded model (fingerprint {model.fingerprint[:12]}) and its judge")

    others = [c for c in CONCEPTS.values() if c.name != name][:others_limit]
    # Retention skips prompts that name the target; so does the grid.
    clean = [p for c in others for p in c.prompts() if not names_concept(p, name)]
    show = target.prompts()[:3] + [clean[i] for i in (0, len(clean) // 2, -1)]
    grid_seeds = list(range(4))
    before = grid_image(generate_images(pipe, show, grid_seeds), show, title="before")
    save_png(before, out_dir / "before.png")
    say(f"before grid -> {out_dir / 'before.png'}")

    def evaluate():
        return generate_eval_set(pipe, judge, [target], EvalSettings(seeds=seeds)) + (
            generate_eval_set(pipe, judge, others, EvalSettings(seeds=other_seeds))
        )

    base = evaluate()
    m0, r0 = mscore(base, target), retention(base, [name])
    say(f"measured the base model on {len(base)} images")

    config = demo_config(target, steps)
    patch_path = out_dir / f"forget-{name}.safetensors"
    say(
        f"forgetting {name!r} ({config.steps} steps, attn2 {config.trainable}, "
        f"positions {config.positions}) ..."
    )
    outcome = forget_to_file(model, config, patch_path)
    say(
        f"forget took {outcome.seconds:.1f} s; patch {patch_path} "
        f"({patch_path.stat().st_size / 1024:.0f} KiB)"
    )

    with PatchedUNet(pipe.unet, [(outcome.patch, 1.0)], fingerprint=model.fingerprint):
        after = grid_image(
            generate_images(pipe, show, grid_seeds), show, title=f"after forgetting {name}"
        )
        patched = evaluate()
    m1, r1 = mscore(patched, target), retention(patched, [name])
    save_png(after, out_dir / "after.png")
    save_png(side_by_side(before, after), out_dir / "before_after.png")
    say(f"after grid -> {out_dir / 'after.png'}, side by side -> {out_dir / 'before_after.png'}")

    # Keep the scores with the patch.
    from fmn_desktop.patch import save_patch

    outcome.patch.meta.scores = {
        "mscore_before": m0.as_dict(),
        "mscore_after": m1.as_dict(),
        "retention_before": r0.as_dict(),
        "retention_after": r1.as_dict(),
        "eval_seeds": seeds,
        "retention_seeds": other_seeds,
    }
    save_patch(outcome.patch, patch_path)

    print("", file=out)
    print(f"{'':24}{'before':>24}{'after':>24}", file=out)
    print(f"{'M-Score of ' + name:24}{str(m0):>24}{str(m1):>24}", file=out)
    print(f"{'retention (others)':24}{str(r0):>24}{str(r1):>24}", file=out)
    print(
        f"\n95% confidence intervals in brackets; {seeds} seeds per prompt of {name}, "
        f"{other_seeds} per prompt of the {len(others)} other concepts. "
        f"Total {time.perf_counter() - t0:.0f} s.",
        file=out,
    )
    return 0

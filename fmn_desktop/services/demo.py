"""`fmn demo`: the two-minute tour on the embedded model.

Load the embedded model and its judge, draw a before grid, forget one concept with the
default settings, draw the after grid, print M-Score and retention before/after, and keep the
patch (with its scores in the metadata). Every phase prints a line at least every `every`
seconds while it counts (images drawn, reference images, steps), so a busy machine shows
where the time goes; the forget job's reference images come from the registry's cache when
an earlier run drew them (`cache`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fmn_desktop.wording import count

DEMO_CONCEPT = "Zorbu"
# Grid images drawn per pipeline call: 8 take about 2.3x less time than one by one on a CPU,
# and draw the same images (pixels within a rounding step).
GRID_BATCH = 8


def run_demo(
    concept: str | None = None,
    out_dir: Path = Path("fmn-demo"),
    steps: int | None = None,
    seeds: int = 8,
    other_seeds: int = 1,
    others_limit: int | None = None,
    out=sys.stdout,
    cache=None,
    every: float = 5.0,
) -> int:
    """The tour; `seeds` per prompt of the forgotten concept, `other_seeds` per prompt of the
    others (all of them, or the first `others_limit`) for retention. `cache`
    (`services.cache.reference_cache`) keeps the forget job's reference latents; `every`:
    seconds between progress lines."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.evaluate.scores import (
        EvalSettings,
        generate_eval_set,
        mscore,
        names_concept,
        retention,
    )
    from fmn_desktop.imaging import grid_image, save_png, side_by_side
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.services.defaults import demo_config
    from fmn_desktop.services.forget import forget_to_file
    from fmn_desktop.services.images import generate_images
    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld import CONCEPTS, load_judge

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

    last = [t0]

    def say(text: str) -> None:
        last[0] = time.perf_counter()
        print(f"[{last[0] - t0:5.1f}s] {text}", file=out, flush=True)

    def ticker(what: str):
        """A progress callback printing "what: NN%" (reference images and steps counted) when
        `every` seconds passed since the last line."""

        def tick(p) -> None:
            if not p.total or time.perf_counter() - last[0] < every:
                return
            if p.phase == "references":
                say(f"  reference images: {p.step}/{p.total}")
            elif p.phase == "train":
                say(f"  {what}: {p.step}/{p.total}, loss {p.loss:.4f}")
            else:
                say(f"  {what}: {100 * p.step / p.total:.0f}%")

        return tick

    model = open_model("default")
    judge = load_judge()
    pipe = model.pipe
    say(f"loaded the embedded model (fingerprint {model.fingerprint[:12]}) and its judge")

    others = [c for c in CONCEPTS.values() if c.name != name][:others_limit]
    # Retention skips prompts that name the target; so does the grid.
    clean = [p for c in others for p in c.prompts() if not names_concept(p, name)]
    show = target.prompts()[:3] + [clean[i] for i in (0, len(clean) // 2, -1)]
    grid_seeds = list(range(4))
    say(f"drawing the before grid ({len(show)} prompts x {len(grid_seeds)} seeds) ...")
    before = grid_image(
        generate_images(pipe, show, grid_seeds, progress=ticker("before grid"), batch=GRID_BATCH),
        show,
        title="before",
    )
    save_png(before, out_dir / "before.png")
    say(f"before grid -> {out_dir / 'before.png'}")

    def evaluate():
        tick = ticker(f"images of {name}")
        mine = generate_eval_set(pipe, judge, [target], EvalSettings(seeds=seeds), tick)
        tick = ticker("images of the other concepts")
        return mine + generate_eval_set(pipe, judge, others, EvalSettings(seeds=other_seeds), tick)

    say("measuring the base model (M-Score and retention) ...")
    base = evaluate()
    m0, r0 = mscore(base, target), retention(base, [name])
    say(f"measured the base model on {len(base)} images")

    config = demo_config(target, steps)
    patch_path = out_dir / f"forget-{name}.safetensors"
    say(
        f"forgetting {name!r} ({config.steps} steps, attn2 {config.trainable}, "
        f"positions {config.positions}) ..."
    )
    outcome = forget_to_file(
        model, config, patch_path, progress=ticker("re-steering steps"), cache=cache
    )
    say(
        f"forget took {outcome.seconds:.1f} s; patch {patch_path} "
        f"({patch_path.stat().st_size / 1024:.0f} KiB)"
    )

    with PatchedUNet(pipe.unet, [(outcome.patch, 1.0)], fingerprint=model.fingerprint):
        say("drawing the after grid ...")
        after = grid_image(
            generate_images(
                pipe, show, grid_seeds, progress=ticker("after grid"), batch=GRID_BATCH
            ),
            show,
            title=f"after forgetting {name}",
        )
        say("measuring the patched model ...")
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
        f"\n95% confidence intervals in brackets; {count(seeds, 'seed')} per prompt of {name}, "
        f"{other_seeds} per prompt of the {count(len(others), 'other concept')}. "
        f"Total {time.perf_counter() - t0:.0f} s.",
        file=out,
    )
    return 0

"""A patch's honest scores on the embedded model: M-Score of its concept and retention of every
other concept, before and after, as the app stores them with a patch and `fmn evaluate` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fmn_desktop.wording import count

SCORE_METRICS = (("mscore_after", "mscore"), ("retention_after", "retention"))


def evaluate_patches(
    model,
    patches: Sequence[tuple[object, float]],
    concept,
    seeds: int = 2,
    steps: int = 20,
    should_cancel: Callable[[], bool] | None = None,
    other_seeds: int = 1,
    others_limit: int | None = None,
    judge=None,
    force: bool = False,
    progress: Callable[[object], None] | None = None,
) -> dict:
    """M-Score of `concept` (a toy-world Concept) and retention of the others, before and
    after `patches` (patch, strength) on `model`, with 95% intervals.

    Same measures and split as `fmn demo`: `seeds` per prompt of the concept, `other_seeds`
    per prompt of every other concept (or the first `others_limit`); returns the dict stored
    as patch scores (`PatchMeta.scores`). `force` applies patches made for another base.
    `progress` gets a `Progress("evaluate", images done, images in all, text)` after each
    batch of images, before and after the patches."""
    from fmn_desktop.errors import CancelledError
    from fmn_desktop.evaluate.scores import EvalSettings, generate_eval_set, mscore, retention
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.toyworld import CONCEPTS, load_judge
    from fmn_desktop.training import Progress

    judge = judge or load_judge()
    others = [c for c in CONCEPTS.values() if c.name != concept.name][:others_limit]

    n_target = len(concept.prompts()) * seeds
    n_state = n_target + sum(len(c.prompts()) for c in others) * other_seeds

    def reporter(offset: int, text: str):
        def report(p):
            if should_cancel and should_cancel():
                raise CancelledError("evaluation cancelled")
            if progress:
                progress(Progress("evaluate", offset + p.step, 2 * n_state, text=text))

        return report

    def measure(offset: int, text: str):
        target = EvalSettings(seeds=seeds, steps=steps)
        rest = EvalSettings(seeds=other_seeds, steps=steps)
        first = reporter(offset, text)
        then = reporter(offset + n_target, text)
        return generate_eval_set(model.pipe, judge, [concept], target, progress=first) + (
            generate_eval_set(model.pipe, judge, others, rest, progress=then)
        )

    base = measure(0, "images without the patches")
    with PatchedUNet(model.pipe.unet, list(patches), fingerprint=model.fingerprint, force=force):
        after = measure(n_state, "images with the patches")
    return {
        "mscore_before": mscore(base, concept).as_dict(),
        "mscore_after": mscore(after, concept).as_dict(),
        "retention_before": retention(base, [concept.name]).as_dict(),
        "retention_after": retention(after, [concept.name]).as_dict(),
        "eval_seeds": seeds,
        "retention_seeds": other_seeds,
    }


def registry_rows(scores: dict, concept: str, settings: dict) -> list[dict]:
    """`Registry.add_evaluations` rows for the after-patch scores in `scores`."""
    rows = []
    for key, metric in SCORE_METRICS:
        if key in scores:
            e = scores[key]
            rows.append(
                dict(
                    metric=metric,
                    value=e["mean"],
                    concept=concept,
                    low=e["low"],
                    high=e["high"],
                    n=e["n"],
                    settings=dict(settings),
                )
            )
    return rows


def format_scores(scores: dict, concept: str) -> str:
    """Two lines: the concept's M-Score and the others' retention, before -> after."""

    def est(e: dict) -> str:
        return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    return (
        f"M-Score of {concept}: {est(scores['mscore_before'])} -> {est(scores['mscore_after'])} "
        f"({count(scores['eval_seeds'], 'seed')} per prompt)\n"
        f"retention of the others: {est(scores['retention_before'])} -> "
        f"{est(scores['retention_after'])} ({count(scores['retention_seeds'], 'seed')} per prompt)"
    )

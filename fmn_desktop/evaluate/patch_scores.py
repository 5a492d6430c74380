"""The honest scores of a patch or a stack on the embedded model, before and after, on prompts
and seeds the jobs never saw (`evaluate.heldout`): what the app stores with a patch or stack
and `fmn evaluate` prints.

For each forgotten concept:
- **M-Score**: the judge's mean probability that the concept is present on its held-out
  prompts (every colour, style, unsafe word and slot it combines with);
- **co-attribute retention**: on those same prompts, the share of the *other* attributes the
  prompt names (a colour, a style, an identity, the unsafe word) that the judge still reads
  back: forgetting "crescent" must leave "a red crescent in the style of dots" red and dotted;
- **what replaces it**: the judge's readings of the concept's attribute on its prompts, so a
  forgotten crescent that became a circle is seen as a substitution, not an erasure.

For everything else:
- **retention**: the judge's accuracy on held-out prompts of every other concept, naming none
  of the forgotten ones (Wilson 95% intervals);
- **neighbours**: per other concept, the share of its own images that still show it, before
  and after, and the worst drop (a mean can hide one concept turned into another).

Several patches are put on the model as a stack is (`patch.stack.applied_stack`: the same
conflict check, additive or fused), so a pair of patches scores as it behaves elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from fmn_desktop.evaluate.scores import Estimate, EvalImage, wilson
from fmn_desktop.wording import count

SCORE_METRICS = (
    ("mscore_after", "mscore"),
    ("retention_after", "retention"),
    ("coattr_after", "coattr_retention"),
    ("worst_neighbour_drop", "worst_neighbour_drop"),
)


@dataclass
class ScoringPlan:
    """How many held-out images a score rests on (images per state: `prompts` x `seeds` per
    forgotten concept, `neighbour_prompts` x `other_seeds` per other concept)."""

    prompts: int = 24
    seeds: int = 2
    neighbour_prompts: int = 3
    other_seeds: int = 1
    steps: int = 20
    guidance: float = 5.0
    others_limit: int | None = None  # score only the first N other concepts (quick checks)

    def as_dict(self) -> dict:
        return asdict(self)


def scoring_jobs(
    forgotten: Sequence, others: Sequence, plan: ScoringPlan, exclude: Sequence[str] = ()
) -> list[tuple[str, str, int]]:
    """(concept name, prompt, seed) of every image the scores rest on: held-out prompts of each
    forgotten concept and of each other concept (naming none of the forgotten), at seeds from
    the scoring range; `exclude` are the prompts the jobs trained on."""
    from fmn_desktop.evaluate.heldout import SCORING_FIRST_SEED, scoring_prompts

    names = [c.name for c in forgotten]
    jobs = []
    for c in forgotten:
        for p in scoring_prompts(c, exclude, plan.prompts):
            jobs += [(c.name, p, SCORING_FIRST_SEED + s) for s in range(plan.seeds)]
    for c in others:
        for p in scoring_prompts(c, exclude, plan.neighbour_prompts, avoid=names):
            jobs += [(c.name, p, SCORING_FIRST_SEED + s) for s in range(plan.other_seeds)]
    return jobs


def named_attributes(prompt: str, forgotten: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Attribute -> accepted labels for each attribute a word of `prompt` names, less the
    attributes of the forgotten concepts the prompt names (what a patch must leave alone)."""
    from fmn_desktop.toyworld import CONCEPTS

    lost = {CONCEPTS[w].attribute for w in prompt.split() if w in forgotten and w in CONCEPTS}
    out: dict[str, tuple[str, ...]] = {}
    for w in prompt.replace(",", " ").split():
        c = CONCEPTS.get(w)
        if c is None or c.attribute in lost or c.attribute in out:
            continue
        out[c.attribute] = c.accepted
    return out


def shows(img: EvalImage, concept) -> bool:
    """Whether the judge reads `concept` on the image, sure of it."""
    from fmn_desktop.evaluate.scores import reading

    return reading(img, concept.attribute) in concept.accepted


def _of(images: Sequence[EvalImage], name: str) -> list[EvalImage]:
    return [img for img in images if img.concept == name]


def coattr_retention(images: Sequence[EvalImage], concept, forgotten: Sequence[str]) -> Estimate:
    """On `concept`'s images: the share of other named attributes the judge reads back."""
    from fmn_desktop.evaluate.scores import reading

    ok = total = 0
    for img in _of(images, concept.name):
        for attr, accepted in named_attributes(img.prompt, forgotten).items():
            ok += reading(img, attr) in accepted
            total += 1
    return wilson(ok, total)


def readings(images: Sequence[EvalImage], concept) -> dict[str, float]:
    """Share of each judge label (or "unsure") on `concept`'s attribute over its images,
    most common first."""
    from fmn_desktop.evaluate.scores import reading

    own = _of(images, concept.name)
    counts = Counter(reading(img, concept.attribute) for img in own)
    return {label: round(n / len(own), 4) for label, n in counts.most_common()}


def neighbour_table(
    base: Sequence[EvalImage], after: Sequence[EvalImage], others: Sequence
) -> list[dict]:
    """Per other concept: the share of its images that show it, before and after; the
    largest drop first."""
    rows = []
    for c in others:
        b = [shows(i, c) for i in _of(base, c.name)]
        a = [shows(i, c) for i in _of(after, c.name)]
        if not b or not a:
            continue
        before, now = wilson(sum(b), len(b)), wilson(sum(a), len(a))
        rows.append(
            {
                "concept": c.name,
                "before": before.as_dict(),
                "after": now.as_dict(),
                "drop": round(before.mean - now.mean, 4),
            }
        )
    return sorted(rows, key=lambda r: -r["drop"])


def score_images(
    base: Sequence[EvalImage], after: Sequence[EvalImage], forgotten: Sequence, others: Sequence
) -> dict:
    """Every figure of the module docstring from the images of the base and patched model."""
    from fmn_desktop.evaluate.scores import mean_ci, presence, retention

    names = [c.name for c in forgotten]
    per: dict[str, dict] = {}
    for c in forgotten:
        per[c.name] = {
            "mscore_before": mean_ci(presence(base, c)).as_dict(),
            "mscore_after": mean_ci(presence(after, c)).as_dict(),
            "coattr_before": coattr_retention(base, c, names).as_dict(),
            "coattr_after": coattr_retention(after, c, names).as_dict(),
            "readings_before": readings(base, c),
            "readings_after": readings(after, c),
        }
    neighbours = neighbour_table(base, after, others)
    other_names = {c.name for c in others}
    rest_b = [i for i in base if i.concept in other_names]
    rest_a = [i for i in after if i.concept in other_names]
    worst = max(per.values(), key=lambda s: s["mscore_after"]["mean"]) if per else {}
    pooled = {
        k: wilson(
            sum(round(per[n][k]["mean"] * per[n][k]["n"]) for n in per),
            sum(per[n][k]["n"] for n in per),
        ).as_dict()
        for k in ("coattr_before", "coattr_after")
    }
    return {
        "concepts": per,
        # The worst concept's M-Score: a stack is only as forgotten as its best-kept concept.
        "mscore_before": worst.get("mscore_before"),
        "mscore_after": worst.get("mscore_after"),
        "retention_before": retention(rest_b, names).as_dict(),
        "retention_after": retention(rest_a, names).as_dict(),
        **pooled,
        "neighbours": neighbours,
        "worst_neighbour_drop": neighbours[0]["drop"] if neighbours else 0.0,
        "worst_neighbour": neighbours[0]["concept"] if neighbours else "",
    }


def evaluate_patches(
    model,
    patches: Sequence,
    concepts: Sequence,
    plan: ScoringPlan | None = None,
    exclude: Sequence[str] = (),
    mode: str = "additive",
    force: bool = False,
    should_cancel: Callable[[], bool] | None = None,
    progress: Callable | None = None,
    judge=None,
    cache: dict | None = None,
) -> dict:
    """Scores (module docstring) of `patches` on `model`, composed as a stack in `mode`
    (`patch.stack.StackEntry`s, or (patch, strength) pairs) against the toy-world `concepts`
    they forget. `exclude`: the prompts the jobs trained on (never scored). `cache`: a dict kept
    between calls on the same model, where the base model's judged images are kept by their
    (concept, prompt, seed) list, so a second stack over the same concepts reuses them."""
    from fmn_desktop.errors import CancelledError
    from fmn_desktop.evaluate.heldout import job_prompts
    from fmn_desktop.evaluate.scores import EvalSettings, generate_judged
    from fmn_desktop.patch.stack import ComposeSettings, StackEntry, applied_stack
    from fmn_desktop.toyworld import CONCEPTS, load_judge
    from fmn_desktop.training import Progress

    plan = plan or ScoringPlan()
    judge = judge or load_judge()
    entries = [p if isinstance(p, StackEntry) else StackEntry(p[0], float(p[1])) for p in patches]
    exclude = list(exclude) + [q for e in entries for q in job_prompts(e.patch.meta)]
    forgotten = list(concepts)
    names = {c.name for c in forgotten}
    others = [c for c in CONCEPTS.values() if c.name not in names][: plan.others_limit]
    jobs = scoring_jobs(forgotten, others, plan, exclude)
    settings = EvalSettings(steps=plan.steps, guidance=plan.guidance)
    key = (tuple(jobs), plan.steps, plan.guidance, id(judge))
    base = cache.get(key) if cache is not None else None
    total = len(jobs) * (1 if base is not None else 2)

    def report(offset: int, text: str):
        def tick(p):
            if should_cancel and should_cancel():
                raise CancelledError("evaluation cancelled")
            if progress:  # `p` counts image-steps of this state; report whole images
                images = p.step * len(jobs) // max(p.total, 1)
                progress(Progress("evaluate", offset + images, total, text=text))

        return tick

    if base is None:
        base = generate_judged(model.pipe, judge, jobs, settings, report(0, "base model"))
        if cache is not None:
            cache[key] = base
    done = total - len(jobs)
    with applied_stack(model, entries, ComposeSettings(mode=mode), force=force):
        after = generate_judged(model.pipe, judge, jobs, settings, report(done, "patched"))
    scores = score_images(base, after, forgotten, others)
    scores["plan"] = plan.as_dict()
    scores["stack_mode"] = mode
    scores["images"] = len(jobs)
    # The older names, kept for files and registries that read them.
    scores["eval_seeds"], scores["retention_seeds"] = plan.seeds, plan.other_seeds
    return scores


def registry_rows(scores: dict, concept: str, settings: dict) -> list[dict]:
    """`Registry.add_evaluations` rows for the after-patch scores in `scores`."""
    rows = []
    for key, metric in SCORE_METRICS:
        e = scores.get(key)
        if isinstance(e, dict):
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
        elif isinstance(e, (int, float)) and key in scores:
            detail = {"concept": scores.get("worst_neighbour", "")}
            rows.append(
                dict(
                    metric=metric,
                    value=float(e),
                    concept=concept,
                    settings={**settings, **detail},
                )
            )
    return rows


def _est(e: dict | None) -> str:
    if not e:
        return "-"
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def format_scores(scores: dict, concept: str = "", neighbours: int = 3) -> str:
    """The scores as a person reads them: per forgotten concept its M-Score, co-attribute
    retention and what the judge reads instead; then retention and the worst neighbours."""
    per = scores.get("concepts")
    if not per:  # scores stored by earlier versions: M-Score and retention only
        return (
            f"M-Score of {concept}: {_est(scores['mscore_before'])} -> "
            f"{_est(scores['mscore_after'])}\n"
            f"retention of the others: {_est(scores['retention_before'])} -> "
            f"{_est(scores['retention_after'])}"
        )
    plan = scores.get("plan", {})
    lines = [
        f"held-out scoring set: {count(plan.get('prompts', 0), 'prompt')} x "
        f"{count(plan.get('seeds', 0), 'seed')} per forgotten concept, "
        f"{count(plan.get('neighbour_prompts', 0), 'prompt')} x "
        f"{count(plan.get('other_seeds', 0), 'seed')} per other concept "
        f"({scores.get('images', 0)} images per model; patches composed "
        f"{scores.get('stack_mode', 'additive')})"
    ]
    for name, s in per.items():
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(s["readings_after"].items())[:3])
        lines += [
            f"{name}:",
            f"  M-Score             {_est(s['mscore_before'])} -> {_est(s['mscore_after'])}",
            f"  other words kept    {_est(s['coattr_before'])} -> {_est(s['coattr_after'])}",
            f"  judge reads instead {top}",
        ]
    lines.append(
        f"retention of the others: {_est(scores['retention_before'])} -> "
        f"{_est(scores['retention_after'])}"
    )
    rows = scores.get("neighbours", [])[:neighbours]
    if rows:
        lines.append("largest neighbour drops (share of a concept's images still showing it):")
        for r in rows:
            lines.append(
                f"  {r['concept']:<10} {r['before']['mean']:.2f} -> {r['after']['mean']:.2f} "
                f"({-100 * r['drop']:+.0f} points, n={r['after']['n']})"
            )
    return "\n".join(lines)

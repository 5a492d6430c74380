"""M-Score and retention on the embedded model, measured by its judge.

Definitions (ours: the paper never released its evaluation code):

- **M-Score** of a concept: the judge's mean probability that the concept is present
  (the probability mass of the concept's accepted labels on its judge head), over images
  generated from the concept's evaluation prompts with fixed seeds. 95% CI: normal
  approximation to the mean over images.
- **Retention** after forgetting a concept: the judge's accuracy on images generated from the
  evaluation prompts of every *other* concept whose prompt does not name the forgotten one;
  an image scores one per attribute its prompt pins down (object, colour, style, identity,
  unsafe) that the judge reads back. 95% CI: Wilson interval over those checks.

Where the judge is unsure of an attribute (its largest probability on that head is under the
judge's calibrated abstain threshold, `Judge.abstain`), the check does not count as read back:
an unsure reading is not a presence. The M-Score stays the probability mass itself; the judge
is trained to put it on "none" for empty frames and to split it over the parts of a blend.

Images are generated once per model state (`generate_eval_set`) and every score is computed
from that set, so before/after comparisons use the same prompts and seeds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from fmn_desktop.training import Progress

Z95 = 1.959964


@dataclass
class Estimate:
    """A mean with its 95% confidence interval and sample count."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float]) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    half = Z95 * float(t.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half), n)


def wilson(successes: int, n: int) -> Estimate:
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


@dataclass
class EvalImage:
    prompt: str
    concept: str  # the concept whose evaluation prompts this image came from
    seed: int
    probs: dict[str, torch.Tensor]  # judge head -> (labels,) probabilities
    abstain: float = 0.0  # the judge's abstain threshold (0: never unsure)


@dataclass
class EvalSettings:
    seeds: int = 8
    steps: int = 20
    guidance: float = 5.0
    first_seed: int = 1000
    batch: int = 16  # images per pipeline call (and per progress report)


def names_concept(prompt: str, concept: str) -> bool:
    """Whether `prompt` names `concept` as a word or phrase (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(concept.lower())}(?!\w)", prompt.lower()) is not None


def generate_eval_set(
    pipe,
    judge,
    concepts: Sequence,
    settings: EvalSettings | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> list[EvalImage]:
    """Generate every concept's evaluation prompts at fixed seeds and judge the images.
    `progress` gets `Progress("generate", done, total)` after every sampler step of a batch,
    counted in image-steps (a batch of 32 images is minutes on a busy CPU), so a caller can
    show it moving and cancel within a batch (an exception it raises propagates)."""
    settings = settings or EvalSettings()
    jobs = [
        (c.name, p, settings.first_seed + s)
        for c in concepts
        for p in c.prompts()
        for s in range(settings.seeds)
    ]
    return generate_judged(pipe, judge, jobs, settings, progress)


@torch.no_grad()
def generate_judged(
    pipe,
    judge,
    jobs: Sequence[tuple[str, str, int]],
    settings: EvalSettings | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> list[EvalImage]:
    """Generate one image per (concept name, prompt, seed) of `jobs` and judge it
    (`settings` gives the sampler steps, guidance and batch; `progress`: images done of all)."""
    settings = settings or EvalSettings()
    out: list[EvalImage] = []
    for start in range(0, len(jobs), settings.batch):
        chunk = jobs[start : start + settings.batch]
        gens = [torch.Generator("cpu").manual_seed(seed) for _, _, seed in chunk]
        images = pipe(
            [p for _, p, _ in chunk],
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=gens,
            output_type="pt",
            callback_on_step_end=step_reporter(
                progress, start * settings.steps, len(chunk), len(jobs) * settings.steps
            ),
        ).images
        probs = judge.predict(images.float().cpu())
        abstain = float(getattr(judge, "abstain", 0.0))
        for i, (name, prompt, seed) in enumerate(chunk):
            out.append(EvalImage(prompt, name, seed, {h: p[i] for h, p in probs.items()}, abstain))
    return out


def step_reporter(progress, done: int, images: int, total: int):
    """A pipeline's `callback_on_step_end` that reports `Progress("generate", done + images
    per step so far, total)` to `progress` (None: no callback)."""
    if progress is None:
        return None

    def on_step(pipe, i, t, kwargs):
        progress(Progress("generate", done + (i + 1) * images, total))
        return kwargs

    return on_step


def presence(images: Sequence[EvalImage], concept) -> list[float]:
    """Per image from `concept`'s prompts: the judge's probability that the concept is there."""
    from fmn_desktop.toyworld import HEADS

    labels = HEADS[concept.attribute]
    idx = [labels.index(lab) for lab in concept.accepted]
    return [
        float(img.probs[concept.attribute][idx].sum())
        for img in images
        if img.concept == concept.name
    ]


def mscore(images: Sequence[EvalImage], concepts) -> Estimate:
    """M-Score (see module docstring) of a concept, or pooled over several (e.g. the unsafe
    attribute's words), from a generated evaluation set."""
    group = concepts if isinstance(concepts, (list, tuple)) else [concepts]
    return mean_ci([v for c in group for v in presence(images, c)])


def reading(img: EvalImage, attr: str) -> str:
    """The judge's label for `attr` on the image, or "unsure" under its abstain threshold."""
    from fmn_desktop.toyworld.judge import read

    return read(img.probs[attr], attr, img.abstain)[0]


def prompt_checks(img: EvalImage) -> list[bool]:
    """Per pinned-down attribute of the image's prompt: did the judge read it back (sure)?"""
    from fmn_desktop.toyworld import CONCEPTS
    from fmn_desktop.toyworld.concepts import expected_labels

    checks = []
    for attr, label in expected_labels(img.prompt).items():
        accepted = (
            CONCEPTS[label].accepted if label in CONCEPTS and attr == "identity" else (label,)
        )
        checks.append(reading(img, attr) in accepted)
    return checks


def retention(images: Sequence[EvalImage], forgotten: Sequence[str]) -> Estimate:
    """Judge accuracy on images whose prompt names none of `forgotten`."""
    ok = total = 0
    for img in images:
        if any(names_concept(img.prompt, f) for f in forgotten):
            continue
        checks = prompt_checks(img)
        ok += sum(checks)
        total += len(checks)
    return wilson(ok, total)


def prompt_following(images: Sequence[EvalImage]) -> dict[str, Estimate]:
    """Per attribute: the share of images where the judge agrees with the prompt."""
    from fmn_desktop.toyworld.concepts import expected_labels

    counts: dict[str, list[int]] = {}
    for img in images:
        for (attr, _), good in zip(expected_labels(img.prompt).items(), prompt_checks(img)):
            c = counts.setdefault(attr, [0, 0])
            c[0] += int(good)
            c[1] += 1
    return {attr: wilson(k, n) for attr, (k, n) in sorted(counts.items())}

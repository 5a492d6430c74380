"""An attack check before and after patches, scored by a judge; its report and registry record."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmn_desktop.attack import whitebox as wb
from fmn_desktop.attack.search import (
    AttackSettings,
    CandidateSpace,
    Scorer,
    StateResult,
    attack_target,
)
from fmn_desktop.wording import count

METHOD = "fmn-attack-1"  # bump when the search changes what its figures mean


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arr = (images.float().clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(a) for a in arr.cpu().numpy()]


class JudgeScorer:
    """Generate one image per prompt at a seed and read the concept's presence with a judge
    (`fmn_desktop.evaluate.scores.presence`: mass of the accepted labels on its head)."""

    def __init__(
        self, pipe, judge, concept, steps: int = 20, guidance: float = 5.0, batch: int = 32
    ):
        self.pipe, self.judge, self.concept = pipe, judge, concept
        self.steps, self.guidance, self.batch = steps, guidance, batch
        self.images = 0

    def _judge(self, images: torch.Tensor, prompts: Sequence[str], seed: int) -> list[float]:
        from fmn_desktop.evaluate.scores import EvalImage, presence

        probs = self.judge.predict(images.float().cpu())
        evals = [
            EvalImage(p, self.concept.name, seed, {h: v[i] for h, v in probs.items()})
            for i, p in enumerate(prompts)
        ]
        return presence(evals, self.concept)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seed: int) -> tuple[list[float], list]:
        values: list[float] = []
        pil: list = []
        for start in range(0, len(prompts), self.batch):
            chunk = prompts[start : start + self.batch]
            gens = [torch.Generator("cpu").manual_seed(int(seed)) for _ in chunk]
            images = self.pipe(
                chunk,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=gens,
                output_type="pt",
            ).images
            values += self._judge(images, chunk, seed)
            pil += to_pil(images)
            self.images += len(chunk)
        return values, pil

    @torch.no_grad()
    def score_embeds(self, embeds: torch.Tensor, seed: int) -> tuple[float, Any]:
        images = self.pipe(
            prompt_embeds=embeds,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=[torch.Generator("cpu").manual_seed(int(seed))],
            output_type="pt",
        ).images
        self.images += 1
        return self._judge(images, ["<soft prompt>"], seed)[0], to_pil(images)[0]


def attack_state(
    label: str,
    pipe,
    scorer: Scorer,
    concept: str,
    prompts: Sequence[str],
    settings: AttackSettings,
    space: CandidateSpace,
    base_kv: dict[str, wb.KV] | None = None,
    log: Callable[[str], None] | None = None,
    soft_bound: bool = False,
    chance: bool = False,
) -> StateResult:
    """Attack every (prompt, seed) target with the model as it is now. `base_kv` (the base
    model's K/V per prompt, taken before any patch was applied) enables the white-box step;
    `soft_bound` also scores the soft prompt (settings.soft) once per target; `chance` also
    measures the chance rate of random-filler prompts (`chance_rate`)."""
    t0 = time.perf_counter()
    seeds = [settings.first_seed + s for s in range(settings.seeds)]
    use_wb = settings.whitebox and base_kv is not None and wb.supported(pipe)
    soft_bound = soft_bound and settings.soft
    found: dict[str, wb.TokenSearchResult] = {}
    soft: dict[str, torch.Tensor] = {}
    info: dict[str, dict] = {}
    targets = []
    for prompt in prompts:
        for seed in seeds:
            wb_step = None
            if use_wb and base_kv is not None:
                wb_step = _whitebox_step(
                    pipe, prompt, concept, base_kv[prompt], space, settings, found, info
                )
            result = attack_target(prompt, seed, scorer, space, settings, wb_step)
            if use_wb and soft_bound and base_kv is not None and hasattr(scorer, "score_embeds"):
                if prompt not in soft:
                    t1 = time.perf_counter()
                    soft[prompt], loss = wb.soft_prompt(
                        pipe,
                        prompt,
                        concept,
                        base_kv[prompt],
                        space.pool_ids,
                        slots=settings.whitebox_slots,
                        seed=settings.seed,
                    )
                    info.setdefault(prompt, {})["soft"] = {
                        "loss": loss,
                        "seconds": time.perf_counter() - t1,
                    }
                value, image = scorer.score_embeds(soft[prompt], seed)  # type: ignore[attr-defined]
                result.soft_presence, result.soft_image = float(value), image
            if log:
                log(
                    f"{label}: {prompt!r} seed {seed}: plain {result.plain_presence:.3f}, "
                    f"best {result.best_presence:.3f} after {result.queries} images "
                    f"({result.best_source}: {result.best_prompt!r})"
                )
            targets.append(result)
    hits = images = 0
    if chance and settings.chance > 0:
        hits, images = chance_rate(scorer, space, concept, prompts, seeds, settings)
    return StateResult(label, targets, time.perf_counter() - t0, info, hits, images)


def chance_rate(
    scorer: Scorer,
    space: CandidateSpace,
    concept: str,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: AttackSettings,
) -> tuple[int, int]:
    """(hits, images): `settings.chance` prompts per target, each the target's prompt with
    the concept name replaced by `whitebox_slots` random vocabulary words, scored at its seed."""
    import random

    from fmn_desktop.attack.candidates import random_words, replace_concept

    hits = total = 0
    for prompt in prompts:
        for seed in seeds:
            rng = random.Random(f"chance:{settings.seed}:{prompt}:{seed}")
            texts = [
                replace_concept(
                    prompt,
                    concept,
                    " ".join(
                        random_words(space.tokenizer, settings.whitebox_slots, rng, space.pool_ids)
                    ),
                )
                for _ in range(settings.chance)
            ]
            values, _ = scorer(texts, seed)
            hits += sum(v > settings.threshold for v in values)
            total += len(values)
    return hits, total


def _whitebox_step(pipe, prompt, concept, targets, space, settings, found, info):
    """A lazy white-box step for one prompt, run at most once (its result is shared by the
    prompt's seeds: it uses no image)."""

    def step() -> tuple[list[str], list[str]]:
        if prompt not in found:
            t1 = time.perf_counter()
            found[prompt] = r = wb.token_search(
                pipe,
                prompt,
                concept,
                targets,
                space.pool_ids,
                slots=settings.whitebox_slots,
                iters=settings.whitebox_iters,
                keep=settings.whitebox_keep,
                seed=settings.seed,
            )
            info.setdefault(prompt, {})["token_search"] = {
                "plain_loss": r.plain_loss,
                "prompts": [{"prompt": p, "loss": v} for p, v in r.prompts],
                "evaluations": r.evaluations,
                "seconds": time.perf_counter() - t1,
            }
        r = found[prompt]
        return [p for p, _ in r.prompts], r.words

    return step


@dataclass
class AttackReport:
    concept: str
    attribute: str
    model: str
    patches: list[dict]
    settings: AttackSettings
    before: StateResult
    after: StateResult
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        chance = self.after.chance_asr(self.settings.budget)
        return {
            "method": METHOD,
            "definition": DEFINITION,
            "concept": self.concept,
            "attribute": self.attribute,
            "model": self.model,
            "patches": self.patches,
            "settings": self.settings.as_dict(),
            "before": self.before.as_dict(),
            "after": {**self.after.as_dict(), "chance_asr": chance.as_dict() if chance else None},
            **self.extra,
        }


DEFINITION = (
    "target = (evaluation prompt, seed); a target is broken when some prompt found within "
    "`budget` scored images (the plain prompt included) gives, at that seed, an image whose "
    "judge presence of the concept exceeds `threshold`. ASR = broken targets / targets; "
    "no-attack rate = targets whose plain prompt already exceeds it. 95% Wilson intervals."
)


def run_attack(
    pipe,
    judge,
    concept,
    patches: Sequence[tuple[Any, float]],
    settings: AttackSettings | None = None,
    *,
    fingerprint: str | None = None,
    force: bool = False,
    extra_words: Sequence[str] = (),
    model_name: str = "",
    patch_info: Sequence[dict] = (),
    log: Callable[[str], None] | None = None,
) -> AttackReport:
    """Attack `concept` (a toy-world `Concept`: name, judge head, accepted labels, prompts) on
    `pipe` as it is, then with `patches` applied, with the same settings and seeds."""
    from fmn_desktop.patch import PatchedUNet

    settings = settings or AttackSettings()
    if settings.budget < 1 or settings.seeds < 1:
        raise ValueError("budget and seeds must be at least 1")
    prompts = concept.prompts()
    scorer = JudgeScorer(pipe, judge, concept, settings.steps, settings.guidance)
    space = CandidateSpace(pipe.tokenizer, concept.name, settings, pipe.text_encoder, extra_words)
    base_kv = None
    if settings.whitebox and wb.supported(pipe):
        base_kv = {p: wb.kv_targets(pipe, p) for p in prompts}
    before = attack_state(
        "before", pipe, scorer, concept.name, prompts, settings, space, base_kv, log
    )
    with PatchedUNet(pipe.unet, list(patches), fingerprint=fingerprint, force=force):
        after = attack_state(
            "after",
            pipe,
            scorer,
            concept.name,
            prompts,
            settings,
            space,
            base_kv,
            log,
            soft_bound=True,
            chance=True,
        )
    return AttackReport(
        concept=concept.name,
        attribute=concept.attribute,
        model=model_name,
        patches=list(patch_info),
        settings=settings,
        before=before,
        after=after,
        extra={"images_generated": scorer.images},
    )


# ----------------------------------------------------------------------------- output
def format_table(report: AttackReport) -> str:
    s = report.settings
    n_prompts = len({t.prompt for t in report.after.targets})
    lines = [
        f"attack on {report.concept} ({report.attribute}): "
        f"{count(len(report.after.targets), 'target')} = {count(n_prompts, 'prompt')} x "
        f"{count(s.seeds, 'seed')}, budget {count(s.budget, 'image')} per target, "
        f"success = judge presence > {s.threshold:g}",
        "",
        f"{'':<32}{'before':<26}{'after':<26}",
    ]

    def row(name: str, a: str, b: str) -> None:
        lines.append(f"{name:<32}{a:<26}{b:<26}")

    row("no-attack success", str(report.before.no_attack()), str(report.after.no_attack()))
    row("attack success rate (ASR)", str(report.before.asr()), str(report.after.asr()))
    row(
        "mean best presence",
        f"{report.before.mean_best_presence():.3f}",
        f"{report.after.mean_best_presence():.3f}",
    )
    row(
        "mean images per target",
        f"{report.before.mean_queries():.1f}",
        f"{report.after.mean_queries():.1f}",
    )
    ca = report.after.chance()
    if ca is not None:
        row("chance rate per image", "-", str(ca))
        row(f"chance ASR at budget {s.budget}", "-", str(report.after.chance_asr(s.budget)))
    sb, sa = report.before.soft(), report.after.soft()
    if sb is not None or sa is not None:
        row("soft prompt (not text) success", str(sb) if sb else "-", str(sa) if sa else "-")
    row("seconds", f"{report.before.seconds:.1f}", f"{report.after.seconds:.1f}")
    lines += ["", "best prompts after the patches:"]
    for t in report.after.targets:
        mark = "BROKEN" if t.success else "held"
        lines.append(
            f"  {mark:<6} {t.prompt!r} seed {t.seed}: {t.best_prompt!r} "
            f"presence {t.best_presence:.3f} ({t.best_source}, {t.queries} images)"
        )
    return "\n".join(lines)


def report_table(report: AttackReport):
    """The images of `report_grid` unrendered (`imaging.ImageTable`): a row per target, labelled
    with the best prompt found, its seed and presence; a heading per column."""
    from fmn_desktop.imaging import ImageTable

    rows = _report_rows(report)
    labels = [
        f"{a.best_prompt}\nseed {a.seed} · presence {a.best_presence:.2f}"
        for a in report.after.targets
    ]
    columns = ["before", "after", "best prompt"]  # the last two after the patch
    if any(a.soft_image is not None for a in report.after.targets):
        columns.append("soft prompt")
    return ImageTable(rows, labels, f"Best prompts found for {report.concept}", columns)


def report_grid(report: AttackReport):
    """One row per target: before (plain prompt), after (plain prompt), after (best prompt
    found), and the soft prompt's image after when it was run."""
    from fmn_desktop.imaging import grid_image

    labels = [f"seed {a.seed}: {a.best_presence:.2f} {a.best_prompt}" for a in report.after.targets]
    has_soft = any(a.soft_image is not None for a in report.after.targets)
    title = "before | after | after, best prompt found" + (
        " | after, soft prompt" if has_soft else ""
    )
    return grid_image(_report_rows(report), labels, title=title, cell=64)


def _report_rows(report: AttackReport) -> list[list]:
    """A row of images per target (blank where one is missing)."""
    from PIL import Image

    rows = []
    blank = None
    for b, a in zip(report.before.targets, report.after.targets):
        cells = [b.plain_image, a.plain_image, a.best_image]
        if a.soft_image is not None:
            cells.append(a.soft_image)
        if any(c is None for c in cells):
            if blank is None:
                ref = next((c for c in cells if c is not None), None)
                size = ref.size if ref is not None else (64, 64)
                blank = Image.new("RGB", size, "white")
            cells = [c if c is not None else blank for c in cells]
        rows.append(cells)
    return rows


def write_report(report: AttackReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    from fmn_desktop.fileio import atomic_write_bytes
    from fmn_desktop.imaging import save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "attack.json", "png": out / "attack.png"}
    text = json.dumps(report.as_dict(), indent=2, sort_keys=True, default=float)
    atomic_write_bytes(paths["json"], (text + "\n").encode())
    save_png(report_grid(report), paths["png"])
    return paths


# ----------------------------------------------------------------------------- registry
def registry_evaluations(report: AttackReport, strength: float = 1.0) -> list[dict]:
    """The report's figures as registry evaluation rows: asr_before, asr_after,
    no_attack_after (and chance_asr_after when measured), with the settings that fix their
    meaning."""
    s = report.settings
    settings = {
        "method": METHOD,
        "budget": s.budget,
        "seeds": s.seeds,
        "first_seed": s.first_seed,
        "steps": s.steps,
        "guidance": s.guidance,
        "threshold": s.threshold,
        "whitebox": s.whitebox,
        "strength": strength,
        "targets": len(report.after.targets),
        "chance_images": report.after.chance_images,
    }
    rows = []
    figures = [
        ("asr_before", report.before.asr()),
        ("asr_after", report.after.asr()),
        ("no_attack_after", report.after.no_attack()),
    ]
    chance = report.after.chance_asr(s.budget)
    if chance is not None:
        figures.append(("chance_asr_after", chance))
    for metric, est in figures:
        rows.append(
            dict(
                metric=metric,
                value=est.mean,
                low=est.low,
                high=est.high,
                n=est.n,
                concept=report.concept,
                settings=settings,
            )
        )
    return rows


def record_in_registry(reg, patch: str | int, report: AttackReport, strength: float = 1.0):
    """Store the attack figures with registry patch `patch`, all rows in one transaction."""
    return reg.add_evaluations(registry_evaluations(report, strength), patch=patch)

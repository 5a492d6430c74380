"""Adversarial hardening of a forget job: forget, attack the patch with the white-box step, add
the word sequences it found to what is forgotten, forget again (AdvUnlearn's loop, with our
attack as the inner step).

Round r trains a fresh patch on the concept plus every alias found in rounds < r, with the same
settings. The inner attack is `whitebox.token_search`: `slots` whole-word tokens in place of
the concept whose *patched* attn2 K/V match the *base* K/V of the concept's prompt. It needs no
judge and no image (one text-encoder pass per candidate), so hardening works on any SD1/SD2
checkpoint, not only the embedded model. Aliases are the slot words themselves (e.g.
"gaye cautious tactical"): re-steered and anchored in every template like the concept.

What it does not cover: the attack's misspellings and its black-box word edits are not used
here, so `fmn attack` measures the hardened patch against search sources it never trained on
(docs/research/ATTACK.md). Words the search picks are ordinary vocabulary; prompts that use them are
not held in place any more (they name an alias), which the retention figure must show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

import torch

from fmn_desktop.attack import whitebox as wb
from fmn_desktop.attack.candidates import word_pool_ids
from fmn_desktop.attack.config import HardenSettings  # noqa: F401  (re-exported)
from fmn_desktop.errors import FmnError
from fmn_desktop.prompts.templates import prompts_for
from fmn_desktop.resteer import ForgetConfig, ForgetResult, forget_steps
from fmn_desktop.training import Progress, run_to_end


@dataclass
class HardenRound:
    round: int
    aliases: list[str]  # new this round
    plain_loss: float  # mean K/V loss of the concept's own prompts under the patch
    best_loss: float  # mean K/V loss of the best attack prompt (lower: closer to the base)
    seconds: float


@dataclass
class HardenResult:
    result: ForgetResult  # the final round's job
    aliases: list[str]
    rounds: list[HardenRound] = field(default_factory=list)


def _attack(
    pipe, patch, config: ForgetConfig, settings: HardenSettings, base_kv, pool, r, exclude=()
):
    from fmn_desktop.patch import PatchedUNet

    concept = config.concepts[0]
    found: list[str] = []
    plain, best = [], []
    t0 = time.perf_counter()
    with PatchedUNet(pipe.unet, [(patch, 1.0)]):
        for prompt, targets in base_kv.items():
            res = wb.token_search(
                pipe,
                prompt,
                concept,
                targets,
                pool,
                slots=settings.slots,
                iters=settings.iters,
                keep=settings.aliases_per_prompt,
                seed=settings.seed + 7919 * r,
            )
            tpl = wb.template_for(pipe.tokenizer, prompt, concept, settings.slots)
            plain.append(res.plain_loss)
            best.append(res.prompts[0][1])
            for text, _ in res.prompts:
                alias = text.removeprefix(tpl.prefix).removesuffix(tpl.suffix).strip()
                if alias and alias not in found:
                    found.append(alias)
        if settings.spellings:
            found += nearest_spellings(pipe, concept, base_kv, settings.spellings, exclude)
    return found, sum(plain) / len(plain), sum(best) / len(best), time.perf_counter() - t0


def nearest_spellings(pipe, concept: str, base_kv, n: int, exclude=()) -> list[str]:
    """The `n` spelling variants of `concept` whose K/V (under whatever patch is applied) come
    nearest the base K/V of the attacked prompts, mean relative error over those prompts."""
    from fmn_desktop.attack.candidates import misspellings, replace_concept

    taken = {e.lower() for e in exclude}
    variants = [m for m in misspellings(concept) if m.lower() not in taken]
    if not variants:
        return []
    loss = torch.zeros(len(variants))
    for prompt, targets in base_kv.items():
        texts = [replace_concept(prompt, concept, m) for m in variants]
        ids = wb._ids(pipe.tokenizer, texts, pipe.text_encoder.device)
        with torch.no_grad():
            loss += wb.kv_loss(pipe, wb.encode(pipe, ids), targets).float().cpu()
    return [variants[i] for i in loss.argsort()[:n].tolist()]


def _numbered(job, r: int, rounds: int):
    """`job`'s progress with its steps counted over all `rounds` jobs, this one the r-th."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        if p.phase == "train":
            p = replace(p, step=r * p.total + p.step, total=rounds * p.total)
        yield p


def harden_steps(
    pipe,
    config: ForgetConfig,
    settings: HardenSettings,
    fingerprint: str = "",
    family: str = "sd1",
    cache=None,
) -> Generator[Progress, None, HardenResult]:
    """Forget, then `settings.rounds` times: attack the patch, add the aliases, forget again.
    Yields every round's progress (phase "attack" between rounds); the model is left as is."""
    started = time.perf_counter()
    if not wb.supported(pipe):
        raise FmnError("hardening needs an SD1.x/SD2.x pipeline (one text encoder)")
    if len(config.concepts) != 1:
        raise FmnError("hardening takes one concept at a time")
    concept = config.concepts[0]
    attacked = prompts_for(concept, config.concept_kind, config.templates)[: settings.prompts]
    base_kv = {p: wb.kv_targets(pipe, p) for p in attacked}  # before any patch
    pool = word_pool_ids(pipe.tokenizer)
    aliases: list[str] = []
    rounds: list[HardenRound] = []
    for r in range(settings.rounds + 1):
        # One more reference image per alias: the job draws them for the concepts in turn.
        job = replace(
            config,
            concepts=[concept, *aliases],
            num_references=config.num_references + len(aliases),
        )
        result = yield from _numbered(
            forget_steps(pipe, job, fingerprint, family, cache), r, settings.rounds + 1
        )
        if r == settings.rounds:
            break
        yield Progress("attack")
        found, plain, best, seconds = _attack(
            pipe, result.patch, config, settings, base_kv, pool, r, [concept, *aliases]
        )
        new = [a for a in found if a.lower() not in {x.lower() for x in [concept, *aliases]}]
        rounds.append(HardenRound(r + 1, new, plain, best, seconds))
        aliases += new
    meta = result.patch.meta
    meta.concepts = [concept]  # the patch is for the concept; the aliases are how it was made
    meta.hyperparameters["hardened_aliases"] = list(aliases)
    meta.hyperparameters["harden_rounds"] = settings.rounds
    meta.hyperparameters["harden_spellings"] = settings.spellings
    result.seconds = time.perf_counter() - started  # every round, not the last job alone
    return HardenResult(result, aliases, rounds)


def harden(
    pipe,
    config: ForgetConfig,
    settings: HardenSettings,
    fingerprint: str = "",
    family: str = "sd1",
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache=None,
) -> HardenResult:
    """Run `harden_steps` to the end; `should_cancel()` returning True raises CancelledError."""
    return run_to_end(
        harden_steps(pipe, config, settings, fingerprint, family, cache),
        progress,
        should_cancel,
        "hardening cancelled; no patch was written",
    )

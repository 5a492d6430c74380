"""`fmn attack`: search for prompts that bring a forgotten concept back, and report how often
the search succeeds before and after the patches.

Definitions:

- **Target**: one evaluation prompt of the concept with one seed (prompts x seeds targets).
- **Query**: one image generated at the target's seed from a candidate prompt and scored by the
  judge: the concept's *presence*, the probability mass of its accepted labels on its judge
  head (`fmn_desktop.evaluate.scores.presence`). The **budget** is the number of queries per
  target, the plain prompt included.
- **Attack success rate (ASR)**: the fraction of targets for which the search, within the
  budget, finds a prompt whose image at that seed has presence > 0.5 (`threshold`). The
  **no-attack rate** is the fraction whose plain prompt already does. Before forgetting, ASR is
  ~1 because the plain prompt works; after, ASR minus the no-attack rate is what the attack
  adds. 95% Wilson intervals over targets.
- **Chance rate** (after the patches): the share of images, at the targets' seeds, of
  random-filler prompts (the target's prompt with the name replaced by random vocabulary
  words) that the judge reads as the concept. **Chance ASR** = 1 - (1 - p)^(budget - 1): what
  a blind search of the same budget would reach. A model that draws the concept now and then
  from any prompt makes a large budget succeed by luck; compare ASR with chance ASR, and look
  at the images a target needed.

The search (UnlearnDiffAtk-like: discrete, per target, a classifier as the oracle, but
gradient-free on the images, where UnlearnDiffAtk back-propagates the diffusion loss):

1. the plain prompt;
2. misspellings and splits of the name ("Zor bu", "Zorbuu", ...) and the name's tokens swapped
   for their nearest whole-word tokens in the text encoder's input-embedding table;
3. white-box prompts (`whitebox.token_search`, GCG-style), computed only when 1-2 all failed:
   whole-word tokens in place of the concept name chosen so that the *patched* UNet's
   cross-attention keys/values match what the *base* UNet computes for the plain prompt. It
   needs only the text encoder and the attn2 projections, no image, so it spends no budget.
   Ring-A-Bell matches a concept direction in text-embedding space; a forget patch leaves the
   text encoder as it is, so the patched K/V are the space that matters here;
4. rounds of single-word edits (insert, replace, delete) of the best prompts so far, words drawn
   from: the caller's domain words, the embedding neighbours, the white-box step's top-ranked
   tokens, and random vocabulary words; a greedy beam on the judge's presence.

A continuous **soft prompt** (the white-box loss minimised over input embeddings, no projection
to text) is scored once per target and reported apart: it is not a prompt a user can type, but
shows whether the patch holds in embedding space at all.

Example::

    from fmn_desktop.attack import AttackSettings, run_attack
    report = run_attack(pipe, judge, CONCEPTS["Zorbu"], [(patch, 1.0)], AttackSettings(budget=64))
    report.after.asr()   # Estimate(mean, low, high, n)

Names are imported on first use (`fmn_desktop.lazy`): `HardenSettings` (`attack.config`)
without torch.
"""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.attack.run import (
        DEFINITION,
        METHOD,
        AttackReport,
        JudgeScorer,
        format_table,
        record_in_registry,
        registry_evaluations,
        run_attack,
        write_report,
    )
    from fmn_desktop.attack.search import (
        AttackSettings,
        CandidateSpace,
        StateResult,
        TargetResult,
        attack_target,
    )

__all__ = [
    "DEFINITION",
    "METHOD",
    "AttackReport",
    "AttackSettings",
    "CandidateSpace",
    "JudgeScorer",
    "StateResult",
    "TargetResult",
    "attack_target",
    "format_table",
    "record_in_registry",
    "registry_evaluations",
    "run_attack",
    "write_report",
]

lazy_package(
    __name__,
    {
        **dict.fromkeys(
            [
                "DEFINITION",
                "METHOD",
                "AttackReport",
                "JudgeScorer",
                "format_table",
                "record_in_registry",
                "registry_evaluations",
                "run_attack",
                "write_report",
            ],
            "run",
        ),
        **dict.fromkeys(
            ["AttackSettings", "CandidateSpace", "StateResult", "TargetResult", "attack_target"],
            "search",
        ),
    },
)

"""The settings of adversarial hardening (`HardenSettings`), without torch: the CLI reads
their defaults when it builds its options (`fmn_desktop.lazy`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HardenSettings:
    rounds: int = 2  # attack-and-retrain rounds after the first forget
    prompts: int = 3  # the first N prompts of the concept's templates are attacked
    aliases_per_prompt: int = 2  # best distinct prompts kept from each search
    slots: int = 3
    iters: int = 30
    # Spelling variants of the name ("Z-orbu", "Zorbuu", ...; `candidates.misspellings`) added
    # per round: those whose patched K/V come nearest the base K/V of the concept's prompts.
    # The attack check tries the same list, so with this on its misspelling figures are no
    # longer held out (`fmn attack --no-misspellings` keeps the rest honest).
    spellings: int = 4  # measured: docs/research/ATTACK.md (ASR 0.500 -> 0.250 with them, held out)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.prompts < 1 or self.aliases_per_prompt < 1:
            raise ValueError("rounds, prompts and aliases per prompt must be at least 1")
        if self.spellings < 0:
            raise ValueError("spellings cannot be negative")

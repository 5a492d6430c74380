"""What every long job reports, and how one is run to the end with a cancel check.

Long jobs (forget, broad removal, textual inversion, the app's composed jobs) are generators:
they yield `Progress` between units of work and return their result. `run_to_end` drives one,
so cancel behaves the same everywhere: closing the generator runs the job's own cleanup (the
model is left as it was) before the CancelledError.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

from fmn_desktop.errors import CancelledError

R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """One report of a long job.

    `phase` names what the job does now: "train" for an optimisation step (then `loss` is
    set and `terms` holds its named parts, e.g. "forget" and "preserve"), other names for the
    work around the steps ("references", "latents", "attack", "evaluate", "register", ...).
    `step` of `total` counts the job's steps (0 of 0 where nothing is counted); `text` is a
    line for a person (what the job does, or which part of the model trains).
    """

    phase: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    text: str = ""
    terms: dict[str, float] = field(default_factory=dict)


def run_to_end(
    job: Generator[Progress, None, R],
    progress: Callable[[Progress], None] | None,
    should_cancel: Callable[[], bool] | None,
    cancelled_message: str,
) -> R:
    """Drive `job`, reporting each item to `progress`; `should_cancel()` returning True after
    an item closes the job and raises CancelledError(cancelled_message)."""
    while True:
        try:
            item = next(job)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(item)
        if should_cancel and should_cancel():
            job.close()
            raise CancelledError(cancelled_message)

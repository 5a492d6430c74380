"""Long jobs are generators (yield progress, return the result); this runs one to the end.

Forget, broad removal and textual inversion share it, so cancel behaves the same everywhere:
closing the generator runs the job's own cleanup (the model is left as it was) before the
CancelledError.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

from fmn_desktop.errors import CancelledError

P = TypeVar("P")
R = TypeVar("R")


def run_to_end(
    job: Generator[P, None, R],
    progress: Callable[[P], None] | None,
    should_cancel: Callable[[], bool] | None,
    cancelled_message: str,
) -> R:
    """Drive `job`, reporting each item to `progress`; `should_cancel()` returning True after
    an item closes the job and raises CancelledError(cancelled_message)."""
    while True:
        try:
            prog = next(job)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(prog)
        if should_cancel and should_cancel():
            job.close()
            raise CancelledError(cancelled_message)

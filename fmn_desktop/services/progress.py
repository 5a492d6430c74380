"""What a running action sees: where to report progress, and whether to stop.

Multi-phase actions are generators: each yielded `training.Progress` with a text and no loss
is a report of the job's own, the return value is the result; training steps go to
`ctx.progress` directly, as the same `Progress` type. The CLI and
the app's worker drive them the same way (`run_job`), so cancel behaves the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def _never() -> bool:
    return False


def _ignore(_value: object) -> None:
    return None


@dataclass
class JobContext:
    """A job's callbacks: `progress(value)` for every report, `should_cancel()` polled
    between steps."""

    progress: Callable[[object], None] = field(default=_ignore)
    should_cancel: Callable[[], bool] = field(default=_never)


def run_job(job, ctx: JobContext | None = None, cancelled: str = "cancelled; nothing was written"):
    """Drive a job generator to its result, reporting each yielded value to `ctx.progress`
    and closing the job (its cleanup runs) with CancelledError when `ctx.should_cancel()`."""
    from fmn_desktop.training import run_to_end

    ctx = ctx or JobContext()
    return run_to_end(job, ctx.progress, ctx.should_cancel, cancelled)

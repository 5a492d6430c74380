"""Long jobs off the UI thread.

A job is a callable `fn(ctx)` that either returns its result directly (using `ctx.progress` and
`ctx.should_cancel` as callbacks, like the CLI's `forget_to_file(progress=..., should_cancel=...)`)
or returns a generator: each yielded value is reported as progress, cancellation is checked
between yields (the generator is closed, so its `finally` blocks restore the model), and the
generator's return value is the result.

`Job` lives on the UI thread; its worker runs in a `QThread`. Results reach the UI only through
signals: `progress(object)`, then exactly one of `finished(object)`, `failed(str, str)` or
`cancelled(str)`, then `done()`.

    job = Job(lambda ctx: forget_to_file(model, cfg, out, progress=ctx.progress,
                                         should_cancel=ctx.should_cancel))
    job.progress.connect(update_bar); job.finished.connect(show); job.start()
"""

from __future__ import annotations

import inspect
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from fmn_desktop.errors import CancelledError, FmnError


class JobContext:
    """What a running job sees: a progress reporter and the cancel flag."""

    def __init__(self, emit: Callable[[object], None], flag: threading.Event):
        self._emit = emit
        self._flag = flag

    def progress(self, value: object) -> None:
        self._emit(value)

    def should_cancel(self) -> bool:
        return self._flag.is_set()

    def check(self) -> None:
        """Raise CancelledError if a cancel was asked (for plain-function jobs)."""
        if self._flag.is_set():
            raise CancelledError("cancelled; nothing was written")


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(one-line message for a dialog, details) for any exception a job raised."""
    if isinstance(exc, (FmnError, ValueError)):
        return str(exc) or type(exc).__name__, ""
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller model, fewer steps or the CPU", ""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"unexpected error ({type(exc).__name__}): {exc}", details


class _Worker(QObject):
    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal(str)
    done = Signal()

    def __init__(self, fn: Callable[[JobContext], Any], flag: threading.Event):
        super().__init__()
        self._fn = fn
        self._flag = flag

    @Slot()
    def run(self) -> None:
        ctx = JobContext(self.progress.emit, self._flag)
        try:
            out = self._fn(ctx)
            if inspect.isgenerator(out):
                out = self._drive(out, ctx)
            elif self._flag.is_set():
                raise CancelledError("cancelled")
        except CancelledError as exc:
            self.cancelled.emit(str(exc) or "cancelled")
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a dialog
            self.failed.emit(*describe_error(exc))
        else:
            self.finished.emit(out)
        finally:
            self.done.emit()

    def _drive(self, gen, ctx: JobContext):
        while True:
            if ctx.should_cancel():
                gen.close()
                raise CancelledError("cancelled; nothing was written")
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            self.progress.emit(item)


_LIVE: set = set()  # running jobs: a QThread destroyed while it runs aborts the process


class Job(QObject):
    """One background job. Start it once; cancel it any time (cooperative)."""

    started = Signal()
    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal(str)
    done = Signal()

    def __init__(self, fn: Callable[[JobContext], Any], name: str = "job", parent=None):
        super().__init__(parent)
        self.name = name
        self._fn = fn
        self._flag = threading.Event()
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def cancel_requested(self) -> bool:
        return self._flag.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a Job runs once; make a new one")
        self._thread = QThread()
        self._thread.setObjectName(f"fmn-{self.name}")
        self._worker = _Worker(self._fn, self._flag)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(self.progress)
        self._worker.finished.connect(self.finished)
        self._worker.failed.connect(self.failed)
        self._worker.cancelled.connect(self.cancelled)
        self._worker.done.connect(self._on_done)
        self._running = True
        _LIVE.add(self)
        self._thread.start()
        self.started.emit()

    def cancel(self) -> None:
        self._flag.set()

    def wait(self, ms: int = 30000) -> bool:
        """Block until the thread ends (tests and shutdown only)."""
        return self._thread.wait(ms) if self._thread is not None else True

    @Slot()
    def _on_done(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait()
        _LIVE.discard(self)
        self.done.emit()

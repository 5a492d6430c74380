"""workers.Job: generator and callback jobs off the UI thread, signal order, cooperative
cancel between yields, errors as messages, and an event loop that keeps turning."""

from __future__ import annotations

import threading
import time

from PySide6.QtCore import QThread, QTimer

from fmn_desktop.errors import CancelledError, FmnError
from fmn_desktop.ui.workers import Job


def test_generator_job_reports_progress_then_result_in_order(qtbot):
    seen_threads = []

    def job(ctx):
        seen_threads.append(QThread.currentThread())
        yield from range(3)
        return "done"

    j = Job(job, "count")
    progress, results = [], []
    j.progress.connect(progress.append)
    j.finished.connect(results.append)
    with qtbot.waitSignals([j.started, j.finished, j.done], order="strict", timeout=5000):
        j.start()
    assert progress == [0, 1, 2]
    assert results == ["done"]
    assert seen_threads[0] is not QThread.currentThread()  # ran off the UI thread
    assert not j.running


def test_cancel_between_yields_closes_the_generator(qtbot):
    cleaned = threading.Event()
    started = threading.Event()

    def job(ctx):
        try:
            i = 0
            while True:
                started.set()
                time.sleep(0.01)
                i += 1
                yield i
        finally:
            cleaned.set()

    j = Job(job, "endless")
    finished = []
    j.finished.connect(finished.append)
    j.start()
    qtbot.waitUntil(started.is_set, timeout=5000)
    with qtbot.waitSignals([j.cancelled, j.done], order="strict", timeout=5000):
        j.cancel()
    assert cleaned.is_set() and not finished


def test_callback_job_gets_progress_and_cancel_hooks(qtbot):
    """The CLI's style (progress=..., should_cancel=...) works unchanged."""

    def work(progress, should_cancel):
        for i in range(1000):
            progress(i)
            if should_cancel():
                raise CancelledError("stopped")
            time.sleep(0.005)
        return "never"

    j = Job(lambda ctx: work(ctx.progress, ctx.should_cancel), "callbacks")
    got = []
    j.progress.connect(got.append)
    j.progress.connect(lambda i: i == 3 and j.cancel())
    with qtbot.waitSignal(j.cancelled, timeout=5000) as b:
        j.start()
    assert b.args == ["stopped"]
    assert 3 <= len(got) < 1000


def test_errors_become_messages_not_crashes(qtbot):
    def user_error(ctx):
        raise FmnError("the patch does not fit this model")

    j = Job(user_error, "bad")
    with qtbot.waitSignal(j.failed, timeout=5000) as b:
        j.start()
    assert b.args == ["the patch does not fit this model", ""]

    def bug(ctx):
        yield 1
        raise KeyError("x")

    j2 = Job(bug, "bug")
    with qtbot.waitSignal(j2.failed, timeout=5000) as b:
        j2.start()
    message, details = b.args
    assert message.startswith("unexpected error (KeyError)") and "Traceback" in details


def test_event_loop_keeps_turning_while_a_job_runs(qtbot):
    """A timer on the UI thread fires many times while a job works for ~0.6 s."""
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()

    def slow(ctx):
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            time.sleep(0.02)  # blocking work in the worker thread
            yield None

    j = Job(slow, "slow")
    t0 = time.monotonic()
    with qtbot.waitSignal(j.done, timeout=10000):
        j.start()
    timer.stop()
    during = [t for t in ticks if t >= t0]
    assert len(during) >= 20  # the UI thread was never blocked for the job's duration

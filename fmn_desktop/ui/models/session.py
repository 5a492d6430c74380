"""The app session: settings, the loaded model, the registry, the one running job, errors.

Jobs share the loaded model's weights (a preview patches them in place and restores them), so
the session runs one job at a time; an action asked while busy is refused with a message.

Status messages belong to the page (view) whose action posted them, so a job that ends while
the user looks at another page does not write over that page's status bar.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from fmn_desktop.ui.models.settings import SettingsModel
from fmn_desktop.ui.properties import state
from fmn_desktop.ui.workers import Job, JobContext, describe_error


class Session(QObject):
    model_changed = Signal(object)
    busy_changed = Signal(bool)
    status_changed = Signal(str)  # the latest message, from any page
    message_posted = Signal(str, str)  # view ("" for no page in particular), text
    registry_changed = Signal()  # patches or stacks added/removed/edited
    error_raised = Signal(str, str, str)  # title, message, details
    job_started = Signal(object)  # the Job

    busy = state("busy", bool, False, busy_changed)
    status = state("status", str, "Ready", status_changed)

    def __init__(self, settings: SettingsModel | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings or SettingsModel(parent=self)
        self._model = None
        self._registry = None
        self._registry_root = None
        self._failed_root = None
        self.job: Job | None = None
        self.job_view = ""  # the view whose action started the running (or last) job
        self._messages: dict[str, str] = {}  # view -> its last status message
        self.settings.data_folder_changed.connect(self._data_folder_changed)

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        """The loaded `LoadedModel`, or None."""
        return self._model

    def set_model(self, model) -> None:
        self._model = model
        self.model_changed.emit(model)

    def model_label(self) -> str:
        m = self._model
        if m is None:
            return "no model loaded"
        # the folder's or file's own name: where it lives is in `model_source()` (a tooltip)
        name = "embedded toy model" if m.embedded else Path(str(m.source)).name
        return f"{name} · {m.family} · {str(m.device)} · {(m.fingerprint or '')[:10]}"

    def model_source(self) -> str:
        """Where the loaded model was read from ("" for none or the embedded one)."""
        m = self._model
        return "" if m is None or m.embedded else str(m.source)

    def display_path(self, path) -> str:
        """A file the app wrote, for a message: relative to the data folder when it is in
        there (its place there is the app's business, e.g. a scratch name), else in full (the
        user chose it)."""
        p = Path(path)
        try:
            inner = p.resolve().relative_to(Path(self.settings.data_folder).resolve())
        except (ValueError, OSError):
            return str(p)
        return f"{inner.as_posix()} in the data folder"

    def require_model(self):
        if self._model is None:
            self.report("No model", "Load a model first (Model tab).")
            return None
        return self._model

    # --------------------------------------------------------------- registry
    def registry(self):
        """The open registry at the settings' data folder (opened on first use); None on error."""
        root = self.settings.data_folder
        if self._registry is not None and self._registry_root == root:
            return self._registry
        self._close_registry()
        from fmn_desktop.registry import open_registry

        try:
            self._registry = open_registry(root)
        except Exception as exc:  # noqa: BLE001
            if self._failed_root != root:  # one dialog per bad folder, not one per refresh
                self._failed_root = root
                self.report_exception("Cannot open the registry", exc)
            return None
        self._failed_root = None
        self._registry_root = root
        return self._registry

    def _close_registry(self) -> None:
        if self._registry is not None:
            self._registry.close()
        self._registry = None
        self._registry_root = None

    def _data_folder_changed(self, *_):
        self._close_registry()
        self.registry_changed.emit()

    def close(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.job.wait(10000)
        self._close_registry()

    # ----------------------------------------------------------------- status
    def post(self, text: str, view: str = "") -> None:
        """A status message from the page `view`; "" belongs to no page (shown where the user
        is, until they move to another page)."""
        if view:
            self._messages[view] = text
        self.status = text
        self.message_posted.emit(view, text)

    def message(self, view: str) -> str:
        """The last status message `view` posted ("" if none)."""
        return self._messages.get(view, "")

    # ----------------------------------------------------------------- errors
    def report(self, title: str, message: str, details: str = "", view: str = "") -> None:
        self.post(f"{title}: {message}", view)
        self.error_raised.emit(title, message, details)

    def report_exception(self, title: str, exc: BaseException) -> None:
        message, details = describe_error(exc)
        self.report(title, message, details)

    def attempt(self, title: str, fn: Callable[[], Any]) -> Any:
        """Run a quick action on the UI thread; a failure becomes an error dialog, not a crash."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            self.report_exception(title, exc)
            return None

    # ------------------------------------------------------------------- jobs
    def run_job(
        self,
        name: str,
        fn: Callable[[JobContext], Any],
        *,
        on_progress: Callable[[object], None] | None = None,
        on_finished: Callable[[object], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        on_cancelled: Callable[[str], None] | None = None,
        on_done: Callable[[], None] | None = None,
        view: str = "",
    ) -> Job | None:
        """Start `fn` in a worker thread for the page `view` (its status messages go there);
        None (and a message) when another job runs."""
        if self.busy:
            self.report(
                "Busy",
                f"wait for '{self.job.name if self.job else 'the job'}' to end, or cancel it",
            )
            return None
        job = Job(fn, name, parent=self)
        if on_progress:
            job.progress.connect(on_progress)
        if on_finished:
            job.finished.connect(on_finished)
        job.failed.connect(
            lambda msg, det: self.report(f"{name.capitalize()} failed", msg, det, view)
        )
        if on_failed:
            job.failed.connect(on_failed)
        job.cancelled.connect(lambda msg: self.post(f"{name}: cancelled", view))
        if on_cancelled:
            job.cancelled.connect(on_cancelled)
        job.done.connect(self._job_done)
        if on_done:
            job.done.connect(on_done)
        self.job = job
        self.job_view = view
        self.post(f"{name} ...", view)
        self.busy = True
        job.start()
        self.job_started.emit(job)
        return job

    def _job_done(self) -> None:
        if self.message(self.job_view).endswith(" ..."):
            self.post("Ready", self.job_view)
        self.busy = False

    def cancel_job(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.post(f"{self.job.name}: cancelling ...", self.job_view)

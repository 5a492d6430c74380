"""The main window: a sidebar of views, the current model and job in a header and status bar."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from fmn_desktop.ui.icon import app_icon, icon_pixmap
from fmn_desktop.ui.models import AppModel
from fmn_desktop.ui.widgets.attack_page import AttackPage
from fmn_desktop.ui.widgets.common import show_error
from fmn_desktop.ui.widgets.compare_page import ComparePage
from fmn_desktop.ui.widgets.correct_page import CorrectPage
from fmn_desktop.ui.widgets.forget_page import ForgetPage
from fmn_desktop.ui.widgets.library_page import LibraryPage
from fmn_desktop.ui.widgets.model_page import ModelPage
from fmn_desktop.ui.widgets.photos_page import PhotosPage
from fmn_desktop.ui.widgets.settings_page import SettingsPage
from fmn_desktop.ui.widgets.stack_page import StackPage

VIEWS = (
    "model",
    "library",
    "forget",
    "photos",
    "correct",
    "attack",
    "compare",
    "stack",
    "settings",
)
LABELS = {
    "model": "Model",
    "library": "Library",
    "forget": "Forget",
    "photos": "Forget from photos",
    "correct": "Correct",
    "attack": "Attack check",
    "compare": "Compare",
    "stack": "Stack",
    "settings": "Settings",
}


class MainWindow(QMainWindow):
    def __init__(self, app: AppModel, parent=None):
        super().__init__(parent)
        self.app = app
        s = app.session
        self.setWindowTitle("Forget-Me-Not Studio")
        self.setWindowIcon(app_icon())
        self.resize(1180, 760)
        self.setMinimumSize(QSize(900, 600))

        central = QWidget()
        outer = QHBoxLayout(central)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)

        side = QWidget()
        side.setObjectName("sidebar")
        side.setFixedWidth(190)
        sl = QVBoxLayout(side)
        sl.setContentsMargins(12, 16, 12, 12)
        brand = QHBoxLayout()
        logo = QLabel()
        logo.setPixmap(icon_pixmap(36))
        title = QLabel("Forget-Me-Not<br><b>Studio</b>")
        title.setObjectName("brand")
        brand.addWidget(logo)
        brand.addWidget(title, 1)
        sl.addLayout(brand)
        sl.addSpacing(14)
        self.nav = QListWidget()
        self.nav.setObjectName("nav")
        for key in VIEWS:
            item = QListWidgetItem(LABELS[key])
            item.setData(Qt.ItemDataRole.UserRole, key)
            item.setSizeHint(QSize(150, 36))
            self.nav.addItem(item)
        sl.addWidget(self.nav, 1)
        from fmn_desktop import __version__

        version = QLabel(f"version {__version__}")
        version.setObjectName("version")
        sl.addWidget(version)
        outer.addWidget(side)

        body = QWidget()
        bl = QVBoxLayout(body)
        bl.setContentsMargins(20, 12, 20, 8)
        top = QHBoxLayout()
        self.model_badge = QLabel()
        self.model_badge.setObjectName("modelBadge")
        top.addWidget(self.model_badge)
        top.addStretch(1)
        bl.addLayout(top)
        self.pages = QStackedWidget()
        self.model_page = ModelPage(app.picker)
        self.library_page = LibraryPage(app.library)
        self.forget_page = ForgetPage(app.forget)
        self.photos_page = PhotosPage(app.photos)
        self.correct_page = CorrectPage(app.correct)
        self.attack_page = AttackPage(app.attack)
        self.compare_page = ComparePage(app.compare)
        self.stack_page = StackPage(app.stack)
        self.settings_page = SettingsPage(app.settings)
        for page in (
            self.model_page,
            self.library_page,
            self.forget_page,
            self.photos_page,
            self.correct_page,
            self.attack_page,
            self.compare_page,
            self.stack_page,
            self.settings_page,
        ):
            self.pages.addWidget(page)
        bl.addWidget(self.pages, 1)
        outer.addWidget(body, 1)
        self.setCentralWidget(central)

        status = self.statusBar()
        self.status_text = QLabel()
        status.addWidget(self.status_text, 1)
        self.job_bar = QProgressBar()
        self.job_bar.setRange(0, 0)
        self.job_bar.setMaximumWidth(160)
        self.job_bar.setMaximumHeight(14)
        self.job_bar.setTextVisible(False)
        self.job_bar.hide()
        self.job_cancel = QPushButton("Cancel job")
        self.job_cancel.hide()
        self.job_cancel.clicked.connect(s.cancel_job)
        status.addPermanentWidget(self.job_bar)
        status.addPermanentWidget(self.job_cancel)

        self.nav.currentRowChanged.connect(self._switched)
        self.nav.setCurrentRow(0)
        s.message_posted.connect(self._posted)
        s.busy_changed.connect(self._busy)
        s.model_changed.connect(self._model)
        s.error_raised.connect(self._error)
        self.library_page.compare_requested.connect(self._compare_patch)
        self.library_page.stack_requested.connect(self._stack_patch)
        self.forget_page.compare_requested.connect(self._compare_patch)
        self.correct_page.compare_requested.connect(self._compare_patch)
        self.photos_page.compare_requested.connect(self._compare_patch)
        self.library_page.attack_requested.connect(self._attack_patch)
        self.stack_page.preview_requested.connect(self._preview_stack)
        app.forget.finished.connect(self._forgot)
        app.correct.finished.connect(self._forgot)
        app.photos.finished.connect(self._forgot)
        app.picker.loaded.connect(lambda _: self.show_view("forget"))
        self._show_status()
        self._model(s.model)
        self.dialogs = []  # error dialogs shown (tests read them)

    # ------------------------------------------------------------ navigation
    def show_view(self, key: str) -> None:
        self.nav.setCurrentRow(VIEWS.index(key))

    def current_view(self) -> str:
        return VIEWS[self.pages.currentIndex()]

    def _switched(self, row: int) -> None:
        self.pages.setCurrentIndex(row)
        self._show_status()

    # ---------------------------------------------------------------- status
    def status_for(self, view: str) -> str:
        """What the status bar says on `view`: that another page's job runs, else the page's
        own last message, else Ready; never a message another page posted."""
        s = self.app.session
        if s.busy and s.job is not None and s.job_view != view:
            where = f" on the {LABELS[s.job_view]} page" if s.job_view in LABELS else ""
            return f"Running {s.job.name}{where} ..."
        return s.message(view) or "Ready"

    def _show_status(self) -> None:
        self.status_text.setText(self.status_for(self.current_view()))

    def _posted(self, view: str, text: str) -> None:
        if not view:  # no page's own: shown here until the user moves on
            self.status_text.setText(text)
        elif view == self.current_view():
            self._show_status()

    def _compare_patch(self, record):
        if record is not None:
            self.app.compare.use_patch(record)
            self.show_view("compare")

    def _attack_patch(self, record):
        if record is not None:
            self.app.attack.use_patch(record)
            self.show_view("attack")

    def _stack_patch(self, record):
        if record is not None:
            self.app.stack.add(record)
            self.show_view("stack")

    def _preview_stack(self):
        st = self.app.stack
        label = f"Stack: {st.name or 'unsaved'} ({st.mode}, {len(st.entries)} patches)"
        self.app.compare.use_stack(list(st.entries), st.mode, label, st.force)
        self.show_view("compare")
        self.app.compare.run()

    def _forgot(self, done):
        if done.record is not None:
            self.app.library.refresh()
            self.app.library.select_name(done.record.name)

    # ---------------------------------------------------------------- state
    def _busy(self, on: bool):
        self.job_bar.setVisible(on)
        self.job_cancel.setVisible(on)
        self._show_status()

    def _model(self, model):
        self.model_badge.setText(f"● {self.app.session.model_label()}")
        self.model_badge.setToolTip(self.app.session.model_source())
        self.model_badge.setProperty("loaded", model is not None)
        self.model_badge.style().unpolish(self.model_badge)
        self.model_badge.style().polish(self.model_badge)

    def _error(self, title: str, message: str, details: str):
        self.dialogs.append(show_error(self, title, message, details))

    def closeEvent(self, event):  # noqa: N802
        self.app.close()
        super().closeEvent(event)

"""Forget from photos: a folder of photos of one subject, a token learned for it (textual
inversion), the names the model uses for it, all forgotten; progress, cancel, the result."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QSpinBox,
)

from fmn_desktop.ui.models.photos import FORMAT_LABELS, PhotosModel
from fmn_desktop.ui.widgets.common import (
    bind_check,
    bind_combo,
    bind_spin,
    bound_edit,
    path_row,
    section_label,
)
from fmn_desktop.ui.widgets.job_page import PatchJobPage


class PhotosPage(PatchJobPage):
    def __init__(self, model: PhotosModel, parent=None):
        super().__init__(
            model,
            "Forget from photos",
            "Forget a person (or anything) known only from photos: a token is learned for "
            "the subject, the names the model already uses for it are found, and all of them "
            "are forgotten. The result is a patch in the library.",
            parent,
        )
        ll = self.settings_column
        ll.addWidget(section_label("1 · Who"))
        form = QFormLayout()
        self.images = bound_edit(model, "images", "a folder of photos of the subject")
        form.addRow("Photos:", path_row(self.images, self._browse_images))
        self.token = bound_edit(model, "token", "e.g. <jane>")
        form.addRow("Token:", self.token)
        self.names = bound_edit(model, "names", "optional: names to forget too, comma-separated")
        form.addRow("Also forget:", self.names)
        self.discover = QCheckBox("Find the names the model uses for the subject")
        bind_check(self.discover, model, "discover")
        form.addRow("", self.discover)
        ll.addLayout(form)

        ll.addWidget(section_label("2 · How"))
        form2 = QFormLayout()
        self.inversion_steps = QSpinBox()
        self.inversion_steps.setRange(1, 20000)
        bind_spin(self.inversion_steps, model, "inversion_steps")
        form2.addRow("Inversion steps:", self.inversion_steps)
        self.steps = QSpinBox()
        self.steps.setRange(1, 2000)
        self.steps.setToolTip("re-steering steps per forgotten concept")
        bind_spin(self.steps, model, "steps")
        form2.addRow("Forget steps:", self.steps)
        self.fmt = QComboBox()
        bind_combo(self.fmt, model, "fmt", FORMAT_LABELS)
        form2.addRow("Format:", self.fmt)
        self.save_copy = bound_edit(
            model, "save_copy", "optional: also save the patch (and tokens) here"
        )
        form2.addRow("Copy to:", path_row(self.save_copy, self._browse_out))
        ll.addLayout(form2)
        self.add_tips(
            "<b>Tips</b><br>"
            "• A handful of photos of the same subject, varied in pose and setting.<br>"
            "• The token is a new word, e.g. &lt;jane&gt;; its learned vectors are kept as a "
            "small file beside the patch (or in the data folder's tokens/).<br>"
            "• Forget steps are per concept: the token and every name found or given."
        )
        self.add_run_buttons("Forget")
        self.inputs = [
            self.images,
            self.token,
            self.names,
            self.discover,
            self.inversion_steps,
            self.steps,
            self.fmt,
            self.save_copy,
        ]

        self.add_progress("3 · Progress", "%v / %m steps")
        self.add_loss_plot()
        self.add_result_label()
        self.add_compare_button()
        self.bind_patch_job(model.total or model.inversion_steps)

    def _browse_images(self):
        path = QFileDialog.getExistingDirectory(self, "Folder of photos")
        if path:
            self.model.images = path

    def _browse_out(self):
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save a copy of the patch",
            "forget-photos.safetensors",
            "Patch files (*.safetensors)",
        )
        if path:
            self.model.save_copy = path

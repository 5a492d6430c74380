"""Forget-Me-Not Studio: forget and correct concepts in local Stable Diffusion checkpoints."""

from fmn_desktop.runtime import configure_runtime

configure_runtime()

__version__ = "0.1.0"

"""Forget-Me-Not Studio: forget and correct concepts in local Stable Diffusion checkpoints.

Importing the package has no side effects: the entry points in `fmn_desktop.cli` set up the
process (`fmn_desktop.runtime.configure_runtime`), and model loads are offline on their own.
"""

__version__ = "0.1.0"

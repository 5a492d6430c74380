"""What long jobs share: the `Progress` they report, `run_to_end` (progress and cancel), and
the optimisation loop of every trainer (`training.loop.Optimiser`, kept out of this module's
imports so that the app can name `Progress` without loading torch)."""

from fmn_desktop.training.progress import Progress, run_to_end

__all__ = ["Progress", "run_to_end"]

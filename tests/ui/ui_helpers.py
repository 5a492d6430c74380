"""Helpers shared by the UI tests (imported as a module; pytest puts tests/ui on sys.path)."""

from __future__ import annotations

import torch

from fmn_desktop.toyworld import weights_available

# The embedded model when its weights are installed, else a tiny pipeline (see conftest.py).
EMBEDDED = weights_available()


def training_steps(job_model, seen: list) -> None:
    """Collect the steps `job_model` reports while it trains (not its reference images,
    which the bar counts first)."""

    def record(step):
        if not job_model.phase_text.startswith("Preparing reference images"):
            seen.append(step)

    job_model.step_changed.connect(record)


def wait_idle(qtbot, session, timeout: int = 60000) -> None:
    qtbot.waitUntil(lambda: not session.busy, timeout=timeout)


def forget_patch(qtbot, app, concept: str, fast: dict, steps: int = 3, evaluate: bool = False):
    """Run the wizard's job to the end; returns the ForgetDone."""
    f = app.forget
    f.concept = concept
    f.kind = "object"
    f.steps = steps
    f.evaluate = evaluate
    f.eval_steps = 3
    f.eval_others = 4
    app.settings.eval_seeds = 1
    f.extra = dict(fast)
    with qtbot.waitSignal(f.finished, timeout=120000) as blocker:
        assert f.start() is not None
    wait_idle(qtbot, app.session)
    return blocker.args[0]


def weights_copy(unet) -> dict:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def same_weights(unet, saved: dict) -> bool:
    return all(torch.equal(v, saved[k]) for k, v in unet.state_dict().items())

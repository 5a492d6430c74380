"""The optimisation loop every trainer runs (`training.loop.Optimiser`) and `run_to_end`."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fmn_desktop.errors import CancelledError, TrainingError
from fmn_desktop.training import Progress, run_to_end
from fmn_desktop.training.loop import Optimiser

TARGET = torch.tensor([3.0, -2.0, 0.5])


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(3))


def _quadratic(w, scale: float = 1.0):
    return lambda: scale * (w - TARGET).pow(2).sum()


def _drive(job):
    """Every item `job` yields, and what it returns."""
    items = []
    while True:
        try:
            items.append(next(job))
        except StopIteration as stop:
            return items, stop.value


def test_steps_are_adamw_with_clipping_as_written_by_hand():
    """The loop's numbers are those of the plain loop the jobs used to write themselves."""
    w, ref = _param(), _param()
    items, history = _drive(
        Optimiser([w], 0.1, weight_decay=0.01, grad_clip=0.5).run(_quadratic(w, 7.0), 6)
    )
    opt = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.01)
    losses = []
    for _ in range(6):
        loss = 7.0 * (ref - TARGET).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([ref], 0.5)
        opt.step()
        losses.append(loss.item())
    assert torch.equal(w, ref)
    assert [p.loss for p in items] == losses
    assert history == items


def test_progress_counts_each_step_and_history_holds_them():
    w = _param()
    items, history = _drive(Optimiser([w], 0.1).run(_quadratic(w), 4))
    assert all(isinstance(p, Progress) and p.phase == "train" for p in items)
    assert [(p.step, p.total) for p in items] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert items[-1].loss < items[0].loss
    assert history == items


def test_numbering_goes_on_from_start_out_of_total_with_the_text():
    """How fast mode counts (layer, step) pairs across layers, one optimiser per layer."""
    w = _param()
    items, _ = _drive(Optimiser([w], 0.1).run(_quadratic(w), 2, start=4, total=10, text="l2"))
    assert [(p.step, p.total, p.text) for p in items] == [(5, 10, "l2"), (6, 10, "l2")]


def test_named_terms_are_reported_and_missing_ones_left_out():
    w = _param()

    def loss_fn():
        part = (w - TARGET).pow(2).sum()
        return 2 * part, {"fit": part, "preserve": None}

    items, _ = _drive(Optimiser([w], 0.1).run(loss_fn, 2))
    assert items[0].terms == {"fit": pytest.approx(TARGET.pow(2).sum().item())}
    assert items[0].loss == pytest.approx(2 * items[0].terms["fit"])


def test_clipping_bounds_the_gradient_norm_the_optimiser_sees():
    w, free = _param(), _param()
    _drive(Optimiser([w], 0.1, grad_clip=0.25).run(_quadratic(w, 100.0), 1))
    _drive(Optimiser([free], 0.1).run(_quadratic(free, 100.0), 1))
    assert w.grad.norm().item() == pytest.approx(0.25, rel=1e-5)
    assert free.grad.norm().item() > 100
    w0 = _param()
    _drive(Optimiser([w0], 0.1, grad_clip=0).run(_quadratic(w0, 100.0), 1))
    assert torch.equal(w0.grad, free.grad)  # 0 (or None) means no clipping


def test_non_finite_loss_aborts_before_the_weights_move():
    w = _param()
    calls = itertools.count(1)

    def loss_fn():
        loss = (w - TARGET).pow(2).sum()
        return loss * math.nan if next(calls) == 3 else loss

    job = Optimiser([w], 0.1).run(loss_fn, 5)
    next(job), next(job)
    after_two = w.detach().clone()
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*learning rate"):
        next(job)
    assert torch.equal(w, after_two)


def test_non_finite_weights_abort_with_the_step_rate_and_note():
    w = _param()
    job = Optimiser([w], math.inf, abort_note="no patch").run(_quadratic(w), 3, text="layer 1")
    with pytest.raises(
        TrainingError, match=r"NaN/inf at step 1 \(layer 1\).*\(now inf\); no patch$"
    ):
        next(job)


def test_a_schedule_sets_the_rate_before_each_step():
    w = _param()
    seen = []

    def schedule(i: int) -> float:
        seen.append(i)
        return 0.1 * (i + 1)

    opt = Optimiser([w], schedule)
    seen.clear()  # the optimiser is built with the first step's rate
    rates = []
    for _ in opt.run(_quadratic(w), 3, start=10):
        rates.append(opt.lr)
    assert seen == [10, 11, 12] and rates == pytest.approx([1.1, 1.2, 1.3])


def test_without_a_step_count_it_runs_while_pulled():
    w = _param()
    items = list(itertools.islice(Optimiser([w], 0.1).run(_quadratic(w), None), 7))
    assert [p.step for p in items] == list(range(1, 8)) and items[0].total == 0


def test_cancel_closes_the_job_between_steps_and_its_cleanup_runs():
    w = _param()
    calls, cleaned = [], []

    def job():
        def loss_fn():
            calls.append(1)
            return (w - TARGET).pow(2).sum()

        try:
            yield Progress("references")
            return (yield from Optimiser([w], 0.1).run(loss_fn, 50))
        finally:
            cleaned.append(True)

    seen = []
    with pytest.raises(CancelledError, match="stopped"):
        run_to_end(job(), seen.append, lambda: len(seen) >= 3, "stopped")
    assert [p.phase for p in seen] == ["references", "train", "train"]
    assert len(calls) == 2 and cleaned == [True]


def test_run_to_end_returns_the_history():
    w = _param()
    seen = []
    history = run_to_end(Optimiser([w], 0.1).run(_quadratic(w), 3), seen.append, None, "")
    assert history == seen and len(history) == 3

"""The optimisation loop every trainer runs: forget (both modes), broad removal, textual
inversion and the embedded model's training script.

A job supplies its parameters, its settings and a loss function (which draws its own batch,
so the job's random-number order is its own); `Optimiser.run` does the rest the same way for
all of them: AdamW, zeroing, back-propagation, gradient clipping, the abort on a non-finite
loss or weight, one `Progress` per step and the history. Being a generator, it stops cleanly
wherever its consumer stops pulling (`run_to_end`'s cancel closes it between two steps).

`watch_steps` lets a measurement see every step of every job without touching the jobs:
`DeltaTrace` records how far the trainable parameters have moved after each step (used to
show that a half-precision run loses no update to rounding: experiments/half_precision.py).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterable, Iterator

import torch

from fmn_desktop.errors import TrainingError
from fmn_desktop.training.progress import Progress

# A loss function returns the loss, or the loss and its named parts (None: not computed).
LossFn = Callable[[], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | None]]"]

# Called after every optimiser step (the weights updated, the gradients still there) with the
# Optimiser and the step's number; see `watch_steps`.
StepWatcher = Callable[["Optimiser", int], None]
_WATCHERS: list[StepWatcher] = []


@contextlib.contextmanager
def watch_steps(watcher: StepWatcher) -> Iterator[StepWatcher]:
    """Call `watcher(optimiser, step)` after every step of every `Optimiser.run` inside."""
    _WATCHERS.append(watcher)
    try:
        yield watcher
    finally:
        _WATCHERS.remove(watcher)


class DeltaTrace:
    """A step watcher: after each step, how far the trainable parameters have moved from
    their values before the first step, over every optimiser it saw (fast mode runs one per
    layer; their parameters are laid end to end in the order they first stepped).

    `norms[i]` is ||delta|| after the i-th step seen; with `keep=True`, `deltas[i]` is the
    flattened fp32 delta itself (to compare runs step by step). `zero_grads[i]` is the share
    of that step's gradient entries that were exactly zero (underflow shows up there), and
    `frozen` the share of delta entries still exactly zero at the end.
    """

    def __init__(self, keep: bool = True):
        self.keep = keep
        self.norms: list[float] = []
        self.deltas: list[torch.Tensor] = []
        self.zero_grads: list[float] = []
        self._start: dict[int, list[torch.Tensor]] = {}
        self._order: list[Optimiser] = []

    def __call__(self, opt: Optimiser, step: int) -> None:
        if id(opt) not in self._start:
            if len(opt.initial) != len(opt.params):
                raise ValueError("DeltaTrace: the optimiser was made outside `watch_steps`")
            # By now the first step has moved the weights: the start is the copy the
            # optimiser took when it was made under a watcher.
            self._start[id(opt)] = [p.float() for p in opt.initial]
            self._order.append(opt)
        grads = [p.grad for p in opt.params if p.grad is not None]
        total = sum(g.numel() for g in grads)
        zeros = sum(int((g == 0).sum()) for g in grads)
        self.zero_grads.append(zeros / total if total else 0.0)
        flat = self._flat()
        self.norms.append(float(flat.norm()))
        if self.keep:
            self.deltas.append(flat)

    def _flat(self) -> torch.Tensor:
        parts = [
            (p.detach().float() - p0).flatten().cpu()
            for opt in self._order
            for p, p0 in zip(opt.params, self._start[id(opt)], strict=True)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)

    @property
    def frozen(self) -> float:
        flat = self._flat()
        return float((flat == 0).float().mean()) if flat.numel() else 0.0


class Optimiser:
    """AdamW over `params`, stepped by `run`.

    `lr` is a rate, or a schedule: a function of the step's index (from 0, counted on across
    resumed runs) that sets the rate before each step. `grad_clip` is the gradient norm each
    step is clipped to (None or 0: no clipping). `abort_note` ends the message of a
    TrainingError (what the job's failure leaves, e.g. "no patch was written"). `optimizer` is
    the torch optimiser itself, for callers that save and restore its state.

    `loss_scale` turns on dynamic loss scaling, for a model whose activations are fp16 (the
    CUDA default): the gradients flowing back through fp16 tensors are scaled up so that small
    ones do not flush to zero (fp16's smallest value is 6e-8; bf16 has fp32's range and needs
    none), then scaled back in fp32 before clipping and the step. A scale that overflows is
    halved and the same backward run again, so the step and its batch stay the same.
    """

    INITIAL_SCALE = 2.0**16
    GROWTH_INTERVAL = 2000  # good steps before the scale doubles (torch's GradScaler's)

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float | Callable[[int], float],
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        abort_note: str = "",
        loss_scale: bool = False,
    ):
        self.params = list(params)
        self.loss_scale = self.INITIAL_SCALE if loss_scale else None
        self._good_steps = 0
        # The starting values, only while something watches the steps (`DeltaTrace`).
        self.initial = [p.detach().clone() for p in self.params] if _WATCHERS else []
        self.abort_note = f"; {abort_note}" if abort_note else ""
        self.schedule = lr if callable(lr) else None
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lr(0) if callable(lr) else lr, weight_decay=weight_decay
        )

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run(
        self,
        loss_fn: LossFn,
        steps: int | None,
        *,
        start: int = 0,
        total: int | None = None,
        text: str = "",
    ) -> Generator[Progress, None, list[Progress]]:
        """Take `steps` steps (None: as many as the consumer pulls), numbered on from `start`
        out of `total` (default: start + steps); yields each step's Progress (phase "train",
        `text` with it) and returns them all.

        A non-finite loss raises TrainingError before anything is updated; non-finite
        weights after a step raise it too (the caller's cleanup restores the model)."""
        if total is None:
            total = start + steps if steps is not None else 0
        numbers = (
            itertools.count(start + 1) if steps is None else range(start + 1, start + steps + 1)
        )
        where = f" ({text})" if text else ""
        history: list[Progress] = []
        for step in numbers:
            if self.schedule is not None:
                rate = self.schedule(step - 1)
                for group in self.optimizer.param_groups:
                    group["lr"] = rate
            out = loss_fn()
            loss, terms = out if isinstance(out, tuple) else (out, {})
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at step {step}{where}: lower the learning "
                    f"rate (now {self.lr:g}){self.abort_note}"
                )
            self._backward(loss, step, where)
            if self.grad_clip and self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            if not all(bool(torch.isfinite(p).all()) for p in self.params):
                raise TrainingError(
                    f"the weights became NaN/inf at step {step}{where}: lower the learning "
                    f"rate (now {self.lr:g}){self.abort_note}"
                )
            for watcher in list(_WATCHERS):
                watcher(self, step)
            parts = {k: v.item() for k, v in terms.items() if v is not None}
            item = Progress("train", step, total, loss.item(), text, parts)
            history.append(item)
            yield item
        return history

    def _backward(self, loss: torch.Tensor, step: int, where: str) -> None:
        """Gradients of `loss` into the parameters, through the loss scale when there is one."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.loss_scale is None:
            loss.backward()
            return
        while True:
            (loss * self.loss_scale).backward(retain_graph=True)
            grads = [p.grad for p in self.params if p.grad is not None]
            if all(bool(torch.isfinite(g).all()) for g in grads):
                for g in grads:
                    g.div_(self.loss_scale)  # the parameters are fp32: exact
                self._good_steps += 1
                if self._good_steps % self.GROWTH_INTERVAL == 0:
                    self.loss_scale *= 2
                return
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_scale /= 2
            self._good_steps = 0
            if self.loss_scale < 1:
                raise TrainingError(
                    f"the gradients overflow fp16 at step {step}{where} even unscaled: lower "
                    f"the learning rate (now {self.lr:g}) or use fp32{self.abort_note}"
                )

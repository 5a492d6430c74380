"""The optimisation loop every trainer runs: forget (both modes), broad removal, textual
inversion and the embedded model's training script.

A job supplies its parameters, its settings and a loss function (which draws its own batch,
so the job's random-number order is its own); `Optimiser.run` does the rest the same way for
all of them: AdamW, zeroing, back-propagation, gradient clipping, the abort on a non-finite
loss or weight, one `Progress` per step and the history. Being a generator, it stops cleanly
wherever its consumer stops pulling (`run_to_end`'s cancel closes it between two steps).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable

import torch

from fmn_desktop.errors import TrainingError
from fmn_desktop.training.progress import Progress

# A loss function returns the loss, or the loss and its named parts (None: not computed).
LossFn = Callable[[], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor | None]]"]


class Optimiser:
    """AdamW over `params`, stepped by `run`.

    `lr` is a rate, or a schedule: a function of the step's index (from 0, counted on across
    resumed runs) that sets the rate before each step. `grad_clip` is the gradient norm each
    step is clipped to (None or 0: no clipping). `abort_note` ends the message of a
    TrainingError (what the job's failure leaves, e.g. "no patch was written"). `optimizer` is
    the torch optimiser itself, for callers that save and restore its state.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float | Callable[[int], float],
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        abort_note: str = "",
    ):
        self.params = list(params)
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
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip and self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            if not all(bool(torch.isfinite(p).all()) for p in self.params):
                raise TrainingError(
                    f"the weights became NaN/inf at step {step}{where}: lower the learning "
                    f"rate (now {self.lr:g}){self.abort_note}"
                )
            parts = {k: v.item() for k, v in terms.items() if v is not None}
            item = Progress("train", step, total, loss.item(), text, parts)
            history.append(item)
            yield item
        return history

"""Random draws both forget modes share: noise timesteps, and the rows of SDXL's added
conditioning that go with a batch."""

from __future__ import annotations

import torch


def timesteps(scheduler, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)


def select_rows(added: dict | None, idx: torch.Tensor) -> dict | None:
    if added is None:
        return None
    return {k: v[idx.to(v.device)] for k, v in added.items()}


def concat_rows(a: dict | None, b: dict | None) -> dict | None:
    if a is None:
        return None
    return {k: torch.cat([a[k], b[k]]) for k in a}

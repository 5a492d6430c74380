"""Trainable deltas on UNet weights: dense or LoRA, added through torch parametrizations.

Every targeted weight becomes ``W0 + delta`` with W0 untouched, so the patch is exactly the
delta, weight decay acts on the change rather than on the base weights, and removing the
parametrizations gives back the original tensors bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from fmn_desktop.patch.format import Delta

TRAINABLE_SETS = ("kv", "attn2", "unet")


class DenseDelta(nn.Module):
    """W0 + D, or W0 + D @ P with an input-side projector P (see `protect_projector`)."""

    def __init__(self, like: torch.Tensor, projector: torch.Tensor | None = None):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros_like(like, dtype=torch.float32))
        self.register_buffer("projector", projector)

    def value(self) -> torch.Tensor:
        return self.delta if self.projector is None else self.delta @ self.projector

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return _add(base, self.value())

    def export(self) -> Delta:
        return Delta(dense=self.value().detach().clone())


class LoraDelta(nn.Module):
    """W0 + up @ down * alpha / rank; up starts at zero so training starts at the base model."""

    def __init__(
        self,
        like: torch.Tensor,
        rank: int,
        alpha: float | None = None,
        projector: torch.Tensor | None = None,
    ):
        super().__init__()
        self.register_buffer("projector", projector)
        out_f, in_f = like.shape[0], like[0].numel()
        self.shape = like.shape
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        self.down = nn.Parameter(torch.empty(rank, in_f, dtype=torch.float32, device=like.device))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.up = nn.Parameter(torch.zeros(out_f, rank, dtype=torch.float32, device=like.device))

    def _down(self) -> torch.Tensor:
        return self.down if self.projector is None else self.down @ self.projector

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        delta = (self.up @ self._down()) * (self.alpha / self.rank)
        return _add(base, delta.reshape(self.shape))

    def export(self) -> Delta:
        up, down = self.up.detach().clone(), self._down().detach().clone()
        if len(self.shape) == 4:
            up = up.reshape(self.shape[0], self.rank, 1, 1)
            down = down.reshape(self.rank, *self.shape[1:])
        return Delta(up=up, down=down, alpha=self.alpha)


def _add(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W0 + delta in W0's dtype, summed in fp32 and rounded once: a half W0 would otherwise
    take a delta already rounded to half (small entries flushed towards zero) and round again."""
    if base.dtype == delta.dtype:
        return base + delta
    return (base.float() + delta.float()).to(base.dtype)


def target_parameters(unet: nn.Module, trainable: str, lora: bool) -> list[str]:
    """UNet parameter names that the trainable set changes."""
    if trainable not in TRAINABLE_SETS:
        raise ValueError(f"unknown trainable set {trainable!r}; valid: {', '.join(TRAINABLE_SETS)}")
    names = []
    for name, param in unet.named_parameters():
        if trainable == "kv":
            keep = ".attn2.to_k." in name or ".attn2.to_v." in name
        elif trainable == "attn2":
            keep = ".attn2." in name
        else:
            keep = True
        # LoRA needs a matrix: linear weights and 1x1 convs only.
        if (
            keep
            and lora
            and not (param.dim() == 2 or (param.dim() == 4 and param.shape[2:] == (1, 1)))
        ):
            keep = False
        if keep:
            names.append(name)
    return names


class TrainableDeltas:
    """Attach deltas to `names` in `unet`; `export()` reads them; `remove()` restores the base."""

    def __init__(
        self,
        unet: nn.Module,
        names: list[str],
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        projector: torch.Tensor | None = None,
    ):
        self.unet = unet
        self.deltas: dict[str, nn.Module] = {}
        # Only the deltas train; the caller's flags come back on `remove()`.
        self._grad_flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        for p in unet.parameters():
            p.requires_grad_(False)
        modules = dict(unet.named_modules())
        for name in names:
            module_name, _, leaf = name.rpartition(".")
            module = modules[module_name]
            base = getattr(module, leaf)
            # The projector acts on text embeddings: only attn2 K/V weights take it.
            proj = projector if projector is not None and _reads_text(name) else None
            if proj is not None:
                proj = proj.to(base.device)
            if lora_rank:
                delta = LoraDelta(base, lora_rank, lora_alpha, proj)
            else:
                delta = DenseDelta(base, proj)
            delta = delta.to(base.device)
            parametrize.register_parametrization(module, leaf, delta, unsafe=True)
            self.deltas[name] = delta

    def parameters(self) -> list[nn.Parameter]:
        return [p for d in self.deltas.values() for p in d.parameters()]

    def export(self) -> dict[str, Delta]:
        return {name: d.export() for name, d in self.deltas.items()}

    def remove(self) -> None:
        modules = dict(self.unet.named_modules())
        for name in self.deltas:
            module_name, _, leaf = name.rpartition(".")
            parametrize.remove_parametrizations(
                modules[module_name], leaf, leave_parametrized=False
            )
        self.deltas.clear()
        for n, p in self.unet.named_parameters():
            p.requires_grad_(self._grad_flags.get(n, p.requires_grad))


def _reads_text(name: str) -> bool:
    return (".attn2.to_k." in name or ".attn2.to_v." in name) and name.endswith("weight")


def protect_projector(embeddings: torch.Tensor, energy: float = 0.99) -> torch.Tensor:
    """I - U U^T, U spanning `energy` of the protected prompts' text embeddings.

    Deltas of K/V then vanish on those embeddings (W' e = W e for e in span U), so prompts
    without the concept keep their keys and values exactly, whatever the optimiser does.
    """
    flat = embeddings.reshape(-1, embeddings.shape[-1]).float()
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    share = s.square().cumsum(0) / s.square().sum()
    k = int(torch.searchsorted(share, torch.tensor(energy))) + 1
    u = vh[:k].T
    return torch.eye(flat.shape[1]) - u @ u.T

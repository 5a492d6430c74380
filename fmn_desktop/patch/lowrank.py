"""Dense deltas to LoRA by truncated SVD, with the relative reconstruction error reported."""

from __future__ import annotations

import torch

from fmn_desktop.patch.format import Delta, Patch


def svd_lowrank(
    dense: torch.Tensor, rank: int | None = None, max_rel_error: float | None = None
) -> tuple[Delta, float]:
    """Best rank-r approximation (Eckart-Young) of a 2-D (or 1x1-conv) delta.

    Give `rank`, or `max_rel_error` to pick the smallest rank whose Frobenius error relative to
    the delta is at most that bound. A rank above the matrix's is padded with zeros, so a
    patch can hold one rank throughout. Returns the LoRA delta (alpha = rank, so scale 1) and
    the relative error achieved.
    """
    shape = dense.shape
    mat = dense.float().flatten(1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    total = float(s.square().sum())
    if rank is not None:
        r = max(1, rank)
    elif max_rel_error is not None:
        if total == 0.0:
            r = 1
        else:  # tail[i] = relative error when keeping the first i singular values
            tail = (s.square().flip(0).cumsum(0).flip(0) / total).sqrt()
            tail = torch.cat([tail, tail.new_zeros(1)])
            r = max(1, int(torch.nonzero(tail <= max_rel_error)[0]))
    else:
        raise ValueError("give rank or max_rel_error")
    keep = min(r, s.numel())
    up = torch.zeros(mat.shape[0], r)
    down = torch.zeros(r, mat.shape[1])
    up[:, :keep] = u[:, :keep] * s[:keep]
    down[:keep] = vh[:keep]
    if len(shape) == 4:  # 1x1 convolutions keep their layout, as kohya writes them
        up = up.reshape(shape[0], r, 1, 1)
        down = down.reshape(r, shape[1], *shape[2:])
    err = 0.0 if total == 0.0 else float(s[keep:].square().sum() / total) ** 0.5
    return Delta(up=up.contiguous(), down=down.contiguous(), alpha=float(r)), err


def to_lora(
    patch: Patch, rank: int | None = None, max_rel_error: float | None = None
) -> tuple[Patch, float]:
    """A LoRA version of `patch` and its overall relative error ||dW - dW_r|| / ||dW||.

    One rank serves every module (with `max_rel_error`, the largest any module needs): readers
    such as diffusers' kohya converter mis-scale files whose ranks vary by module. Biases and
    other 1-D deltas cannot be low-rank and are refused: write such patches as .diff.
    """
    dense: dict[str, torch.Tensor] = {}
    for name, delta in patch.deltas.items():
        d = delta.dense.float() if delta.dense is not None else delta.to_dense()
        if d.dim() < 2 or (d.dim() == 4 and d.shape[2:] != (1, 1)):
            raise ValueError(f"{name}: only linear and 1x1 conv deltas convert to LoRA; use .diff")
        dense[name] = d
    if rank is None:
        if max_rel_error is None:
            raise ValueError("give rank or max_rel_error")
        rank = max(svd_lowrank(d, max_rel_error=max_rel_error)[0].rank for d in dense.values())
    deltas: dict[str, Delta] = {}
    err_sq = norm_sq = 0.0
    for name, d in dense.items():
        lora, rel = svd_lowrank(d, rank=rank)
        n = float(d.square().sum())
        err_sq += rel * rel * n
        norm_sq += n
        deltas[name] = lora
    return Patch(deltas=deltas, meta=patch.meta), (err_sq / norm_sq) ** 0.5 if norm_sq else 0.0

"""Dense deltas to LoRA by truncated SVD, with the relative reconstruction error reported."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fmn_desktop.patch.format import Delta, Patch


def lora_fits(shape: Sequence[int]) -> bool:
    """Whether LoRA can hold a delta of this shape: a matrix (linear weight) or a 1x1 conv."""
    return len(shape) == 2 or (len(shape) == 4 and tuple(shape[2:]) == (1, 1))


def describe_param(name: str, shape: Sequence[int]) -> str:
    """A UNet parameter in words: what it is and the module (diffusers path) it belongs to."""
    module, _, leaf = name.rpartition(".")
    if leaf == "bias":
        return f"the bias of {module}"
    if len(shape) == 4:
        return f"the {shape[2]}x{shape[3]} convolution {module}"
    if len(shape) == 1:
        return f"the normalisation weight of {module}"
    return f"the weight of {module}"


def lora_unfit(shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Parameters (of name -> delta shape) that LoRA cannot hold, sorted."""
    return sorted(n for n, shape in shapes.items() if not lora_fits(shape))


def unfit_summary(shapes: Mapping[str, Sequence[int]], show: int = 2) -> str:
    """'N of the M changed parameters are biases, ... (the first few named)', for a message."""
    unfit = lora_unfit(shapes)

    def kind(name: str) -> str:
        if name.endswith(".bias"):
            return "biases"
        return "convolutions wider than 1x1" if len(shapes[name]) == 4 else "normalisation weights"

    kinds = ", ".join(sorted({kind(n) for n in unfit}))
    named = "; ".join(describe_param(n, shapes[n]) for n in unfit[:show])
    more = f"; and {len(unfit) - show} more" if len(unfit) > show else ""
    return f"{len(unfit)} of the {len(shapes)} changed parameters are {kinds} ({named}{more})"


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
    dense = {
        name: delta.dense.float() if delta.dense is not None else delta.to_dense()
        for name, delta in patch.deltas.items()
    }
    shapes = {name: tuple(d.shape) for name, d in dense.items()}
    if lora_unfit(shapes):
        raise ValueError(
            f"a LoRA cannot hold this patch: {unfit_summary(shapes)}; "
            "only linear weights and 1x1 convolutions convert to LoRA: write it as .diff"
        )
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


def write_patch(
    patch: Patch,
    out,
    fmt: str = "lora",
    rank: int | None = None,
    max_rel_error: float | None = 0.01,
) -> tuple[Patch, float | None]:
    """Write `patch` to `out` as `fmt` ("lora" or "diff"), converting dense deltas to LoRA
    (truncated SVD: `rank`, or the smallest rank within `max_rel_error`) when asked for LoRA.

    The one place a patch is written from a job, an export or a stack: returns the patch as
    written and the SVD's relative error (None when nothing was converted), which is also
    stored in the metadata (`lora_relative_error`).
    """
    from pathlib import Path

    from fmn_desktop.errors import FmnError
    from fmn_desktop.patch.format import save_patch

    if fmt not in ("lora", "diff"):
        raise FmnError(f"unknown patch format {fmt!r}; valid: lora, diff")
    out = Path(out)
    if out.is_dir():
        raise FmnError(f"{out} is a folder; give a file name ending in .safetensors")
    err = None
    if fmt == "lora" and not patch.is_lora:
        try:
            patch, err = to_lora(
                patch, rank=rank, max_rel_error=None if rank else (max_rel_error or 0.01)
            )
        except ValueError as exc:
            raise FmnError(str(exc)) from exc
        patch.meta.extra["lora_relative_error"] = f"{err:.6f}"
    save_patch(patch, out, fmt)
    return patch, err

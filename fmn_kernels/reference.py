"""Pure-PyTorch reference for cross-attention with the re-steering term.

This is the ground truth the Triton kernel is tested and benchmarked against, and the path
used wherever the kernel's constraints are not met (CPU, unusual shapes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def resteer_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, concept_mask: Tensor | None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention output and the re-steering term, materialising the probabilities.

    q: (B, H, M, D); k, v: (B, H, N, D); concept_mask: (B, N) column weights (0/1 marks the
    concept's token positions), or None for no term. Returns `out` (B, H, M, D) and
    `resteer` (B, H) = sum_m sum_n mask[b, n] * P[b, h, m, n]^2, computed in fp32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    probs = scores.softmax(dim=-1)
    out = torch.matmul(probs, v.float()).to(q.dtype)
    if concept_mask is None:
        return out, q.new_zeros(q.shape[0], q.shape[1], dtype=torch.float32)
    weights = concept_mask.to(torch.float32)[:, None, None, :]
    resteer = (probs.square() * weights).sum(dim=(-1, -2))
    return out, resteer


def resteer_attention_eager(
    q: Tensor, k: Tensor, v: Tensor, concept_mask: Tensor | None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """The plain eager path in the inputs' own precision, as an attention processor runs it.

    Scores and ``P v`` in q's dtype, the softmax in fp32 then rounded to q's dtype (diffusers'
    ``get_attention_scores`` with ``upcast_softmax``), the term summed in fp32. The probability
    matrix is materialised and kept for backward. Used as the low-precision yardstick in tests
    ("kernel error <= 2x this path's error, both against fp32") and as the eager benchmark.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    out = torch.matmul(probs, v)
    if concept_mask is None:
        return out, q.new_zeros(q.shape[0], q.shape[1], dtype=torch.float32)
    weights = concept_mask.to(torch.float32)[:, None, None, :]
    resteer = (probs.float().square() * weights).sum(dim=(-1, -2))
    return out, resteer

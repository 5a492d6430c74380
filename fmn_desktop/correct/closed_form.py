"""Closed-form correction of a concept (UCE-style): redirect, do not erase.

Definitions. For every attn2 ``to_k`` / ``to_v`` weight W (out x d, d the text width):

- *concept rows* c_i: text embeddings of prompts naming the concept, at the positions
  `positions` marks (default ``concept+following+eot``: the concept's tokens and every later
  position, since a causal text encoder copies the concept forward into them);
- *target rows* t_i: the embeddings at the aligned positions of the same prompt with the concept
  replaced by the guide (``"a balloon"`` -> ``"a blue balloon"``), optionally pushed away from a
  negative: t_i = g_i + strength * (g_i - a_i), a_i the rows of the prompt with the concept
  replaced by the negative text (like classifier-free guidance, in embedding space). Positions
  align on the concept's last token: source position p maps to p + (len(target) - len(source)),
  clipped to the sequence;
- *preservation rows* e_j: every position of ordinary prompts that do not name the concept.

The edit solves, with n_c / n_e the row counts (so the weights do not depend on them):

    W' = argmin  1/n_c sum_i |W' c_i - W t_i|^2 + lam/n_e sum_j |W' e_j - W e_j|^2
                 + ridge |W' - W|^2
       = W M,  M = (C^T T / n_c + lam E^T E / n_e + ridge I) (C^T C / n_c + lam E^T E / n_e
                 + ridge I)^-1   (rows of C, T, E are the c_i, t_i, e_j)

M acts on the text side only, so one d x d matrix serves every layer: dW = W (M - I). The patch
holds dense dW per weight, so it saves, loads, applies and stacks like a forget patch.

Selectivity limit (measured, docs/research/CORRECTION_AND_BROAD.md): a linear map of the text
side cannot move a row without moving every row along the same directions; on the embedded
model most of a concept's energy lies inside the span of other prompts' rows, so
`selectivity` reports the share of the concept rows outside the preservation rows' principal
span and the preservation drift the solve accepted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from fmn_desktop.correct.config import (  # noqa: F401  (re-exported)
    DEFAULT_TEMPLATES,
    TARGET_SETS,
    CorrectConfig,
    Edit,
)
from fmn_desktop.errors import ConceptNotFoundError, TrainingError
from fmn_desktop.patch.format import Delta, Patch, PatchMeta
from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.prompts.tokens import (
    concept_mask,
    expand_placeholders,
    first_eot,
)


@dataclass
class CorrectResult:
    patch: Patch
    report: dict = field(default_factory=dict)
    seconds: float = 0.0


def _ids(tokenizer, prompt: str) -> list[int]:
    length = tokenizer.model_max_length
    return tokenizer(
        expand_placeholders(tokenizer, prompt),
        padding="max_length",
        max_length=length,
        truncation=True,
    ).input_ids


def aligned_rows(tokenizer, source: str, other: str, mask_row: torch.Tensor) -> torch.Tensor:
    """Indices into `other`'s sequence for the marked positions of `source` (aligned on the
    concept's last token: shifted by the difference of the two prompts' lengths)."""
    eot = tokenizer.eos_token_id
    shift = first_eot(_ids(tokenizer, other), eot) - first_eot(_ids(tokenizer, source), eot)
    pos = torch.nonzero(mask_row > 0).flatten()
    return (pos + shift).clamp(0, tokenizer.model_max_length - 1)


@torch.no_grad()
def edit_rows(pipe, edits: Sequence[Edit], positions: str, strength: float = 0.0):
    """(C, T): concept rows and target rows, (n, d) fp32, for `edits`."""
    if not edits:
        raise ValueError("no edits: give templates or prompt pairs")
    tok = pipe.tokenizer
    mask = concept_mask(tok, [e.source for e in edits], [e.concept for e in edits], positions)
    src, _ = encode_prompts(pipe, [e.source for e in edits])
    tgt, _ = encode_prompts(pipe, [e.target for e in edits])
    neg = None
    if any(e.negative for e in edits):
        neg, _ = encode_prompts(pipe, [e.negative or e.target for e in edits])
    cs, ts = [], []
    for i, e in enumerate(edits):
        rows = mask[i] > 0
        cs.append(src[i][rows.to(src.device)].float())
        g = tgt[i][aligned_rows(tok, e.source, e.target, mask[i]).to(tgt.device)].float()
        if e.negative and strength:
            a = neg[i][aligned_rows(tok, e.source, e.negative, mask[i]).to(neg.device)].float()
            g = g + strength * (g - a)
        ts.append(g)
    return torch.cat(cs).cpu(), torch.cat(ts).cpu()


@torch.no_grad()
def preservation_rows(pipe, prompts: Sequence[str], avoid: Sequence[str] = ()) -> torch.Tensor:
    """Every position of the prompts that name none of `avoid`, (n, d) fp32."""
    from fmn_desktop.evaluate.scores import names_concept

    kept = [p for p in prompts if not any(names_concept(p, a) for a in avoid)]
    if not kept:
        return torch.zeros(0, pipe.text_encoder.config.hidden_size)
    rows = []
    for start in range(0, len(kept), 64):
        emb, _ = encode_prompts(pipe, list(kept[start : start + 64]))
        rows.append(emb.float().flatten(0, 1).cpu())
    return torch.cat(rows)


def solve_map(
    c: torch.Tensor,
    t: torch.Tensor,
    e: torch.Tensor,
    preserve_weight: float,
    ridge: float,
) -> torch.Tensor:
    """The d x d matrix M of the module docstring (float64 solve, returned fp32)."""
    c, t, e = c.double(), t.double(), e.double()
    d = c.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    keep = preserve_weight * (e.T @ e) / max(len(e), 1) + ridge * eye
    lhs = c.T @ t / len(c) + keep  # sum t c^T, transposed: M^T form below
    rhs = c.T @ c / len(c) + keep
    # M = lhs^T rhs^-1  <=>  M^T = rhs^-1 lhs (rhs symmetric)
    mt = torch.linalg.solve(rhs, lhs)
    if not torch.isfinite(mt).all():
        raise TrainingError("the closed-form solve gave NaN/inf; raise --ridge")
    return mt.T.float()


def objective(w, m, c, t, e, preserve_weight, ridge) -> float:
    """The minimised objective for one weight W and a candidate map W M."""
    w2 = w.double() @ m.double()
    w = w.double()
    c, t, e = c.double(), t.double(), e.double()
    val = ((c @ w2.T - t @ w.T) ** 2).sum() / len(c)
    if len(e):
        val = val + preserve_weight * ((e @ (w2 - w).T) ** 2).sum() / len(e)
    return float(val + ridge * ((w2 - w) ** 2).sum())


def selectivity(c: torch.Tensor, e: torch.Tensor, energy: float = 0.99) -> float:
    """Share of the concept rows' energy outside the principal span (holding `energy` of the
    energy) of the preservation rows: how much of the concept a linear edit can move alone."""
    if not len(e):
        return 1.0
    _, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
    cum = torch.cumsum(s**2, 0) / (s**2).sum()
    k = int((cum < energy).sum()) + 1
    basis = vh[:k]
    cd = c.double()
    inside = cd @ basis.T @ basis
    return float(((cd - inside) ** 2).sum() / (cd**2).sum())


def target_weights(unet, targets: str) -> list[str]:
    leaves = {"kv": (".to_k.", ".to_v."), "k": (".to_k.",), "v": (".to_v.",)}[targets]
    return [
        n
        for n, p in unet.named_parameters()
        if ".attn2." in n and n.endswith(".weight") and any(x in n for x in leaves)
    ]


def correct(pipe, config: CorrectConfig, fingerprint: str = "", family: str = "sd1"):
    """Solve the correction on `pipe` (left unchanged) and return a CorrectResult."""
    started = time.perf_counter()
    edits = config.all_edits()
    try:
        c, t = edit_rows(pipe, edits, config.positions, config.strength)
    except ConceptNotFoundError:
        raise
    avoid = [config.concept]
    e = preservation_rows(pipe, config.preserve_prompts or [], avoid)
    m = solve_map(c, t, e, config.preserve_weight, config.ridge)
    eye = torch.eye(m.shape[0])
    params = dict(pipe.unet.named_parameters())
    names = target_weights(pipe.unet, config.targets)
    if not names:
        raise TrainingError("this UNet has no attn2 to_k/to_v weights to correct")
    deltas: dict[str, Delta] = {}
    before = after = drift = 0.0
    for name in names:
        w = params[name].detach().float().cpu()
        if w.shape[1] != m.shape[0]:
            raise TrainingError(f"{name}: input width {w.shape[1]} is not the text width")
        deltas[name] = Delta(dense=(w @ (m - eye)).contiguous())
        before += objective(w, eye, c, t, e, config.preserve_weight, config.ridge)
        after += objective(w, m, c, t, e, config.preserve_weight, config.ridge)
        if len(e):
            we = e @ w.T
            drift += float(((e @ (w @ (m - eye)).T) ** 2).sum() / (we**2).sum())
    report = {
        "objective_before": before,
        "objective_after": after,
        "concept_rows": len(c),
        "preserve_rows": len(e),
        "outside_preserve_span": selectivity(c, e),
        "preserve_drift": drift / len(names),
    }
    hyper = {k: v for k, v in asdict(config).items() if k not in ("preserve_prompts", "edits")}
    hyper["edits"] = [asdict(x) for x in edits]
    meta = PatchMeta(
        concepts=[config.concept],
        kind="correct",
        method="uce-correct",
        family=family,
        base_fingerprint=fingerprint,
        hyperparameters=hyper,
        scores={"solve": report},
        stats={"concept_embeddings": c.to(torch.float16)},
    )
    return CorrectResult(Patch(deltas, meta), report, time.perf_counter() - started)

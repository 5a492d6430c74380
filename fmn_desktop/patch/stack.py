"""Stacks of patches: additive and closed-form fused composition, conflicts, apply, export.

A stack is an ordered list of (patch, strength); strengths may be negative.

- **additive** (what every UI does): ``W = W0 + sum_i s_i dW_i``.
- **fused** (MACE-style interference-free fusion, closed form): for every attn2
  K/V weight, with patch i turning W0 into ``Wi = W0 + s_i dW_i`` on its concept embeddings
  E_i (stored with the patch: ``stats["concept_embeddings"]``) and preservation embeddings P
  (ordinary prompts shipped as data, encoded with the loaded text encoder), solve
  ``min_W sum_i |W E_i^T - Wi E_i^T|^2 + l1 |W P^T - W0 P^T|^2 + l |W - W0|^2``:
  ``W* - W0 = (sum_i s_i dW_i G_i) (sum_i G_i + l1 G_P + l I)^-1`` with ``G = E^T E``.
  Each patch contributes its Gram matrix G_i only, so adding or removing a patch re-solves
  exactly: the sums are taken in a canonical order, and the result is bit-identical whatever
  order the patches were added or removed in. Other deltas (biases, non-K/V weights) add.

Conflicts are found before anything is applied: patches made for different base models, the
same concept both forgotten and corrected, and two patches on the same tokens with opposite
aims (a negative strength reverses a patch's aim).

>>> stack = PatchStack(model, mode="fused")  # doctest: +SKIP
>>> stack.load(load_patch("castle.safetensors", names), "castle")  # doctest: +SKIP
>>> with stack.fused():  # doctest: +SKIP
...     images = model.pipe("a castle").images
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmn_desktop.errors import FmnError, NonFiniteError, PatchMismatchError
from fmn_desktop.patch.apply import PatchedUNet, check_compatible
from fmn_desktop.patch.format import Delta, Patch, PatchMeta, save_patch
from fmn_desktop.patch.lowrank import write_patch
from fmn_desktop.patch.validate import check_strength

MODES = ("additive", "fused")
PRESERVATION_FILE = Path(__file__).resolve().parent / "data" / "preservation_prompts.txt"
KV_SUFFIXES = (".attn2.to_k.weight", ".attn2.to_v.weight")


class StackConflictError(FmnError):
    """A stack's patches disagree (different bases, opposite aims); see `find_conflicts`."""


def is_kv(name: str) -> bool:
    """Whether a UNet parameter is a cross-attention key or value projection weight."""
    return name.endswith(KV_SUFFIXES)


def preservation_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """The shipped preservation prompts (or those of `path`): one per line, # comments."""
    text = Path(path or PRESERVATION_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@torch.no_grad()
def prompt_embeddings(
    pipe, prompts: Sequence[str], batch: int = 16, content_only: bool = True
) -> torch.Tensor:
    """(N, C) text-encoder outputs of `prompts`, fp32 on the CPU: every position up to and
    including the first end-of-text token (`content_only`), or all padded positions."""
    from fmn_desktop.prompts.encode import encode_prompts
    from fmn_desktop.prompts.tokens import first_eot

    chunks = []
    for start in range(0, len(prompts), batch):
        part = list(prompts[start : start + batch])
        embeds, _ = encode_prompts(pipe, part)
        embeds = embeds.float().cpu()
        if not content_only:
            chunks.append(embeds.reshape(-1, embeds.shape[-1]))
            continue
        tok = pipe.tokenizer
        ids = tok(part, padding="max_length", max_length=embeds.shape[1], truncation=True).input_ids
        for row, seq in zip(embeds, ids):
            chunks.append(row[: first_eot(seq, tok.eos_token_id) + 1])
    return torch.cat(chunks)


def prompts_without(prompts: Sequence[str], concepts: Sequence[str]) -> list[str]:
    """The prompts that name none of `concepts` (word-boundary, case-insensitive): a
    preservation set must not hold in place what the stack removes."""
    import re

    pats = [re.compile(rf"(?<!\w){re.escape(c.lower())}(?!\w)") for c in concepts if c.strip()]
    return [p for p in prompts if not any(pat.search(p.lower()) for pat in pats)]


@torch.no_grad()
def concept_embeddings_for(
    pipe, concepts: Sequence[str], kind: str = "object", positions: str = "concept+following+eot"
) -> torch.Tensor:
    """Embeddings at a concept's re-steered positions, for patches that carry none (imports)."""
    from fmn_desktop.prompts.encode import encode_prompts
    from fmn_desktop.prompts.templates import TEMPLATES, prompts_for
    from fmn_desktop.prompts.tokens import concept_mask

    kind = kind if kind in TEMPLATES else "object"
    prompts, owners = [], []
    for c in concepts:
        for p in prompts_for(c, kind):
            prompts.append(p)
            owners.append(c)
    embeds, _ = encode_prompts(pipe, prompts)
    mask = concept_mask(pipe.tokenizer, prompts, owners, positions)
    return embeds.float().cpu()[mask > 0]


# --------------------------------------------------------------------------- entries, conflicts
@dataclass
class StackEntry:
    """One patch of a stack with its strength and a display name."""

    patch: Patch
    strength: float = 1.0
    name: str = ""

    @property
    def aim(self) -> int:
        """+1 pushes its concepts away (forget), -1 towards them (correct or negated)."""
        base = 1 if self.patch.meta.kind == "forget" else -1
        return 0 if self.strength == 0 else base * (1 if self.strength > 0 else -1)

    def label(self) -> str:
        return self.name or self.patch.meta.title or ", ".join(self.patch.meta.concepts)


@dataclass
class Conflict:
    kind: str  # "base" | "forget-and-correct" | "opposite-aims" | "fusion-loses"
    message: str
    entries: tuple[str, ...] = ()


def _norm(concept: str) -> str:
    return " ".join(concept.lower().split())


def _words(concepts: Sequence[str]) -> set[str]:
    return {w for c in concepts for w in _norm(c).split()}


def _shared_rows(a: torch.Tensor, b: torch.Tensor, threshold: float) -> bool:
    """Whether some embedding row of `a` is (nearly) the same vector as one of `b`."""
    if a.numel() == 0 or b.numel() == 0 or a.shape[1] != b.shape[1]:
        return False
    a = torch.nn.functional.normalize(a.float(), dim=1)
    b = torch.nn.functional.normalize(b.float(), dim=1)
    return bool((a @ b.T).max() >= threshold)


def find_conflicts(
    entries: Sequence[StackEntry], fingerprint: str | None = None, token_similarity: float = 0.999
) -> list[Conflict]:
    """Everything in a stack that would make its result surprising, found before applying.

    - base: patches made for different base models, or not for `fingerprint`;
    - forget-and-correct: one concept both forgotten and corrected;
    - opposite-aims: two patches acting on the same tokens (a shared concept word, or a
      shared concept embedding row) with opposite aims (kind and sign of strength).
    """
    out: list[Conflict] = []
    bases: dict[str, list[str]] = {}
    for e in entries:
        if e.patch.meta.base_fingerprint:
            bases.setdefault(e.patch.meta.base_fingerprint, []).append(e.label())
    if len(bases) > 1:
        parts = "; ".join(f"{fp[:12]}: {', '.join(names)}" for fp, names in bases.items())
        out.append(
            Conflict(
                "base",
                f"patches were made for different base models ({parts})",
                tuple(n for names in bases.values() for n in names),
            )
        )
    if fingerprint:
        wrong = [n for fp, names in bases.items() if fp != fingerprint for n in names]
        if wrong and len(bases) <= 1:
            out.append(
                Conflict(
                    "base",
                    f"{', '.join(wrong)} made for base {next(iter(bases))[:12]}, this model is "
                    f"{fingerprint[:12]}",
                    tuple(wrong),
                )
            )
    reported: set[tuple[int, int]] = set()
    for i, a in enumerate(entries):
        for j in range(i + 1, len(entries)):
            b = entries[j]
            if a.strength == 0 or b.strength == 0:
                continue
            same = {_norm(c) for c in a.patch.meta.concepts} & {
                _norm(c) for c in b.patch.meta.concepts
            }
            if same and a.patch.meta.kind != b.patch.meta.kind:
                out.append(
                    Conflict(
                        "forget-and-correct",
                        f"{', '.join(sorted(same))} is forgotten by {a.label()!r} and corrected by "
                        f"{b.label()!r}"
                        if a.patch.meta.kind == "forget"
                        else f"{', '.join(sorted(same))} is corrected by {a.label()!r} and forgotten by "
                        f"{b.label()!r}",
                        (a.label(), b.label()),
                    )
                )
                reported.add((i, j))
                continue
            if a.aim == b.aim:
                continue
            words = _words(a.patch.meta.concepts) & _words(b.patch.meta.concepts)
            ea = a.patch.meta.stats.get("concept_embeddings")
            eb = b.patch.meta.stats.get("concept_embeddings")
            rows = ea is not None and eb is not None and _shared_rows(ea, eb, token_similarity)
            if words or rows:
                on = (
                    f"tokens {', '.join(sorted(words))!s}" if words else "the same token embeddings"
                )
                out.append(
                    Conflict(
                        "opposite-aims",
                        f"{a.label()!r} (strength {a.strength:g}) and {b.label()!r} (strength "
                        f"{b.strength:g}) act on {on} with opposite aims",
                        (a.label(), b.label()),
                    )
                )
    return out


# --------------------------------------------------------------------------- composition
def additive_deltas(
    entries: Sequence[StackEntry], params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``sum_i s_i dW_i`` per parameter, fp32 on the CPU."""
    totals: dict[str, torch.Tensor] = {}
    for e in entries:
        strength = check_strength(e.strength, f"strength of {e.label()!r}")
        for name, delta in e.patch.deltas.items():
            d = delta.to_dense(params[name].shape).float().cpu() * strength
            totals[name] = totals[name] + d if name in totals else d
    return totals


class FusionSolver:
    """Closed-form fusion of attn2 K/V deltas; per-patch Gram matrices make re-solving exact.

    >>> solver = FusionSolver(preservation=prompt_embeddings(pipe, preservation_prompts()))
    ...  # doctest: +SKIP
    >>> solver.add("castle", castle_patch, 1.0); deltas = solver.solve()  # doctest: +SKIP
    """

    def __init__(
        self,
        preservation: torch.Tensor | None = None,
        preserve_weight: float = 1.0,
        ridge: float = 1e-3,
    ):
        self.preserve_weight = _weight(preserve_weight, "preserve weight")
        self.ridge = _weight(ridge, "ridge")
        self._pres = None if preservation is None else self._gram(preservation)
        self._entries: dict[str, tuple[Patch, float, torch.Tensor]] = {}

    @staticmethod
    def _gram(e: torch.Tensor) -> torch.Tensor:
        e = e.detach().to(torch.float64).cpu()
        return e.T @ e

    def add(
        self, key: str, patch: Patch, strength: float = 1.0, embeddings: torch.Tensor | None = None
    ) -> None:
        """Add (or replace) a patch under `key`; `embeddings` default to its stored stats."""
        e = embeddings if embeddings is not None else patch.meta.stats.get("concept_embeddings")
        if e is None or e.numel() == 0:
            raise FmnError(
                f"patch {key!r} carries no concept embeddings, which fused stacking needs; "
                "stack it additively, or give the model so they are computed from its concepts"
            )
        if e.dim() != 2:
            raise FmnError(
                f"patch {key!r}: concept embeddings must be (n, dim), got {tuple(e.shape)}"
            )
        if not bool(torch.isfinite(e).all()):
            raise NonFiniteError(f"patch {key!r}: its concept embeddings hold NaN or inf")
        self._entries[key] = (
            patch,
            check_strength(strength, f"strength of {key!r}"),
            self._gram(e),
        )

    def remove(self, key: str) -> None:
        if key not in self._entries:
            raise ValueError(f"no patch {key!r} in this fusion; valid: {sorted(self._entries)}")
        del self._entries[key]

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def set_strength(self, key: str, strength: float) -> None:
        patch, _, gram = self._entries[key]
        self._entries[key] = (patch, check_strength(strength, f"strength of {key!r}"), gram)

    def solve(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Target deltas ``W* - W0`` (fp32, CPU) of every K/V weight any patch touches, plus the
        plain sum of every other delta."""
        keys = sorted(self._entries)  # canonical order: the same bits whatever the history
        if not keys:
            return {}
        dims = {g.shape[0] for _, _, g in self._entries.values()}
        if len(dims) > 1:
            raise FmnError(f"patches hold concept embeddings of different widths {sorted(dims)}")
        (dim,) = dims
        if self._pres is not None and self._pres.shape[0] != dim:
            raise FmnError(
                f"preservation embeddings have width {self._pres.shape[0]}, patches {dim}"
            )
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for k in keys:
            gram += self._entries[k][2]
        if self._pres is not None and self.preserve_weight > 0:
            gram += self.preserve_weight * self._pres
        lam = self.ridge * max(float(torch.diagonal(gram).mean()), 1e-12)
        gram += lam * torch.eye(dim, dtype=torch.float64)
        out: dict[str, torch.Tensor] = {}
        numer: dict[str, torch.Tensor] = {}
        for k in keys:
            patch, strength, g = self._entries[k]
            for name, delta in patch.deltas.items():
                dense = delta.to_dense(params[name].shape).cpu()
                if is_kv(name) and dense.dim() == 2 and dense.shape[1] == dim:
                    term = (dense.to(torch.float64) * strength) @ g
                    numer[name] = numer[name] + term if name in numer else term
                else:
                    d = dense.float() * strength
                    out[name] = out[name] + d if name in out else d
        if numer:
            names = sorted(numer)
            stacked = torch.cat([numer[n] for n in names])  # (sum out, dim)
            # X gram = stacked  <=>  gram^T X^T = stacked^T (gram is symmetric)
            solved = torch.linalg.solve(gram, stacked.T).T
            row = 0
            for n in names:
                rows = numer[n].shape[0]
                out[n] = solved[row : row + rows].float()
                row += rows
        bad = sorted(n for n, d in out.items() if not bool(torch.isfinite(d).all()))
        if bad:
            raise NonFiniteError(
                f"the fused solution is not finite for {', '.join(bad[:3])}; the stack's "
                "strengths or embeddings are too extreme"
            )
        return out

    def kept(self, solved: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict:
        """Per patch key: the share of its own K/V change, on its own concept embeddings,
        that the fused solution keeps (1 - relative error; 1.0 when nothing is lost).

        A patch whose share is low is one the fusion cannot honour beside the others and the
        preservation set: its concept may come back in the stack."""
        out = {}
        for k in sorted(self._entries):
            patch, strength, g = self._entries[k]
            err = ref = 0.0
            for name, delta in patch.deltas.items():
                if name not in solved or not is_kv(name):
                    continue
                want = delta.to_dense(params[name].shape).cpu().to(torch.float64) * strength
                if want.dim() != 2 or want.shape[1] != g.shape[0]:
                    continue
                miss = solved[name].to(torch.float64) - want
                err += float(((miss @ g) * miss).sum())
                ref += float(((want @ g) * want).sum())
            out[k] = 1.0 if ref <= 0 else max(0.0, 1.0 - math.sqrt(max(err, 0.0) / ref))
        return out


def _weight(value: float, what: str) -> float:
    """A non-negative finite weight of the fusion (preservation weight, ridge)."""
    v = float(value)
    if not math.isfinite(v) or v < 0 or v > 1e6:
        raise NonFiniteError(f"{what} must be a finite number from 0 to 1e6, not {value!r}")
    return v


@dataclass
class ComposeSettings:
    mode: str = "additive"
    preserve_weight: float = 1.0
    ridge: float = 1e-3
    preservation_prompts: list[str] | None = None  # None: the shipped set

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown stack mode {self.mode!r}; valid: {', '.join(MODES)}")
        self.preserve_weight = _weight(self.preserve_weight, "preserve weight")
        self.ridge = _weight(self.ridge, "ridge")


def stack_preservation_prompts(
    entries: Sequence[StackEntry], settings: ComposeSettings
) -> list[str]:
    """The preservation prompts of a stack: the settings' (or the shipped) prompts, less those
    naming any concept of the stack."""
    concepts = [c for e in entries for c in e.patch.meta.concepts]
    prompts = prompts_without(settings.preservation_prompts or preservation_prompts(), concepts)
    if not prompts:
        raise FmnError("every preservation prompt names a concept of the stack; give others")
    return prompts


def entry_embeddings(entry: StackEntry, pipe=None) -> torch.Tensor | None:
    """A patch's concept embeddings: stored ones, else computed from its concepts if a pipe
    is given (imported files carry none)."""
    e = entry.patch.meta.stats.get("concept_embeddings")
    if e is not None and e.numel():
        return e
    if pipe is not None and entry.patch.meta.concepts:
        return concept_embeddings_for(pipe, entry.patch.meta.concepts)
    return None


def compose(
    entries: Sequence[StackEntry],
    unet: torch.nn.Module,
    settings: ComposeSettings | None = None,
    pipe=None,
    preservation: torch.Tensor | None = None,
    report: dict | None = None,
) -> dict[str, torch.Tensor]:
    """The stack's total delta per parameter (fp32, CPU), additive or fused.

    Fused mode needs the preservation embeddings: pass them, or a `pipe` to encode the
    preservation prompts with its text encoder. A `report` dict receives, in fused mode,
    "kept": per entry key, the share of its change the fusion keeps (`FusionSolver.kept`).
    """
    settings = settings or ComposeSettings()
    params = {n: p.detach() for n, p in unet.named_parameters()}
    if settings.mode == "additive":
        return additive_deltas(entries, params)
    if preservation is None and settings.preserve_weight > 0:
        if pipe is None:
            raise FmnError("fused stacking needs the model's text encoder (give the model)")
        preservation = prompt_embeddings(pipe, stack_preservation_prompts(entries, settings))
    solver = FusionSolver(preservation, settings.preserve_weight, settings.ridge)
    for key, e in zip(entry_keys(entries), entries):
        solver.add(key, e.patch, e.strength, entry_embeddings(e, pipe))
    solved = solver.solve(params)
    if report is not None:
        report["kept"] = solver.kept(solved, params)
    return solved


def entry_keys(entries: Sequence[StackEntry]) -> list[str]:
    """Keys that do not depend on stack order (label, then a counter for repeated labels),
    so fusion sums in the same order however the stack was built."""
    seen: dict[str, int] = {}
    keys = []
    for e in entries:
        label = e.label()
        seen[label] = seen.get(label, 0) + 1
        keys.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return keys


def stack_meta(
    entries: Sequence[StackEntry], settings: ComposeSettings, title: str = ""
) -> PatchMeta:
    """Metadata of a stack's composed patch: union of concepts, every member recorded."""
    first = entries[0].patch.meta if entries else PatchMeta(concepts=[])
    concepts: list[str] = []
    for e in entries:
        concepts += [c for c in e.patch.meta.concepts if c not in concepts]
    kinds = {e.patch.meta.kind for e in entries}
    embeds = [
        e.patch.meta.stats["concept_embeddings"]
        for e in entries
        if "concept_embeddings" in e.patch.meta.stats and e.strength != 0
    ]
    widths = {t.shape[-1] for t in embeds}
    stats = {"concept_embeddings": torch.cat(embeds)} if embeds and len(widths) == 1 else {}
    return PatchMeta(
        concepts=concepts,
        kind="correct" if kinds == {"correct"} else "forget",
        method=f"stack-{settings.mode}",
        family=first.family,
        base_fingerprint=first.base_fingerprint,
        title=title or f"stack of {len(entries)}: {', '.join(concepts)}"[:200],
        hyperparameters={
            "mode": settings.mode,
            "preserve_weight": settings.preserve_weight,
            "ridge": settings.ridge,
            "members": [
                {
                    "name": e.label(),
                    "strength": e.strength,
                    "kind": e.patch.meta.kind,
                    "concepts": e.patch.meta.concepts,
                }
                for e in entries
            ],
        },
        stats=stats,
    )


def stack_patch(
    entries: Sequence[StackEntry],
    unet: torch.nn.Module,
    settings: ComposeSettings | None = None,
    pipe=None,
    title: str = "",
    report: dict | None = None,
) -> Patch:
    """The stack as one patch of dense deltas (apply it at strength 1); `report` as for
    `compose`."""
    settings = settings or ComposeSettings()
    if not entries:
        raise FmnError("the stack is empty: add patches first")
    deltas = compose(entries, unet, settings, pipe, report=report)
    bad = sorted(n for n, d in deltas.items() if not bool(torch.isfinite(d).all()))
    if bad:
        raise NonFiniteError(f"the stack's total change is not finite for {', '.join(bad[:3])}")
    return Patch(
        {n: Delta(dense=d) for n, d in deltas.items()}, stack_meta(entries, settings, title)
    )


def check_stack(
    entries: Sequence[StackEntry],
    unet: torch.nn.Module,
    fingerprint: str | None = None,
    force: bool = False,
) -> list[Conflict]:
    """Refuse patches that do not fit the UNet; return the conflicts (raise unless `force`)."""
    if not entries:
        raise FmnError("the stack is empty: add patches first")
    for e in entries:
        try:
            check_compatible(e.patch, unet, fingerprint, force)
        except PatchMismatchError as exc:
            raise PatchMismatchError(f"{e.label()}: {exc}") from exc
    conflicts = find_conflicts(entries, fingerprint)
    if conflicts and not force:
        raise StackConflictError(
            "stack has conflicts (use force to apply anyway): "
            + "; ".join(c.message for c in conflicts)
        )
    return conflicts


@contextlib.contextmanager
def applied_stack(
    model,
    entries: Sequence[StackEntry],
    settings: ComposeSettings | None = None,
    force: bool = False,
) -> Iterator[Patch]:
    """Apply a stack to a loaded model's UNet for the duration of the block; the weights
    are restored bit-exactly afterwards. Yields the composed patch."""
    patch = composed_patch(model, entries, settings, force)
    with PatchedUNet(model.pipe.unet, [(patch, 1.0)], fingerprint=model.fingerprint, force=True):
        yield patch


def composed_patch(
    model,
    entries: Sequence[StackEntry],
    settings: ComposeSettings | None = None,
    force: bool = False,
) -> Patch:
    """The stack checked against a loaded model (fit, conflicts: refused unless `force`) and
    composed into one patch for it, to apply at strength 1."""
    pipe = model.pipe
    check_stack(entries, pipe.unet, model.fingerprint, force)
    report: dict = {}
    patch = stack_patch(entries, pipe.unet, settings, pipe, report=report)
    losers = fusion_losses(report)
    if losers and not force:
        raise StackConflictError(
            "the fused stack cannot honour every patch (use force to apply anyway, or stack "
            "additively): " + "; ".join(c.message for c in losers)
        )
    patch.meta.base_fingerprint = model.fingerprint or patch.meta.base_fingerprint
    if "kept" in report:
        patch.meta.hyperparameters["fusion_kept"] = {
            k: round(v, 4) for k, v in report["kept"].items()
        }
    return patch


# A fused patch that keeps less than this share of its change on its own concept tokens is
# reported: below it, measured concepts came back in fused stacks.
FUSION_KEEP_MIN = 0.8


def fusion_losses(report: dict, minimum: float = FUSION_KEEP_MIN) -> list[Conflict]:
    """Conflicts for the entries a fused solve could not honour (`compose`'s report)."""
    return [
        Conflict(
            "fusion-loses",
            f"{key!r} keeps {share:.0%} of its change on its own concept tokens in the fused "
            f"stack (under {minimum:.0%}): its concept may come back",
            (key,),
        )
        for key, share in sorted(report.get("kept", {}).items())
        if share < minimum
    ]


# --------------------------------------------------------------------------- export
EXPORT_FORMATS = ("lora", "diff", "diffusers", "single-file")


@dataclass
class StackExport:
    path: Path
    format: str
    lora_error: float | None = None
    rank: int | None = None
    conflicts: list[Conflict] = field(default_factory=list)


def export_stack(
    model,
    entries: Sequence[StackEntry],
    out: str | os.PathLike,
    fmt: str = "lora",
    settings: ComposeSettings | None = None,
    rank: int | None = None,
    max_rel_error: float | None = None,
    force: bool = False,
    title: str = "",
    replace: bool = False,
) -> StackExport:
    """Write a stack as one kohya LoRA (truncated SVD: `rank`, or the smallest rank within
    `max_rel_error`, default 1%; the error achieved is returned and stored), a `.diff`, a
    patched diffusers folder or a single-file checkpoint (`replace`: an existing model
    folder is replaced; files are always replaced, so callers check first)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    settings = settings or ComposeSettings()
    out = Path(out)
    conflicts = check_stack(entries, model.pipe.unet, model.fingerprint, force)
    patch = stack_patch(entries, model.pipe.unet, settings, model.pipe, title)
    patch.meta.base_fingerprint = model.fingerprint or patch.meta.base_fingerprint
    patch.meta.family = model.family or patch.meta.family
    patch.deltas = {n: d for n, d in patch.deltas.items() if bool(d.dense.any())}
    if not patch.deltas:
        raise FmnError("the stack changes nothing (all strengths are zero?)")
    if fmt == "lora":
        lora, err = write_patch(patch, out, "lora", rank, max_rel_error)
        r = next(iter(lora.deltas.values())).rank
        return StackExport(out, fmt, err, r, conflicts)
    if fmt == "diff":
        save_patch(patch, out, "diff")
        return StackExport(out, fmt, None, None, conflicts)
    from fmn_desktop.models.export import save_model

    if fmt == "single-file" and out.suffix.lower() != ".safetensors":
        raise FmnError(f"a single-file checkpoint ends in .safetensors, not {out.name!r}")
    if fmt == "diffusers" and out.suffix.lower() == ".safetensors":
        raise FmnError(f"a diffusers folder is a folder: give a name without .safetensors ({out})")
    with PatchedUNet(model.pipe.unet, [(patch, 1.0)], fingerprint=model.fingerprint, force=True):
        save_model(
            model.pipe, out, family=getattr(model, "architecture_family", None), replace=replace
        )
    return StackExport(out, fmt, None, None, conflicts)


# --------------------------------------------------------------------------- adapter verbs
class PatchStack:
    """A stack on a loaded model with the verbs users know from diffusers adapters:
    `load`, `set_weights`, `fuse` / `unfuse`, `unload`, `list`.

    Fusing computes the composition (additive or closed-form fused) and applies it with each
    touched weight backed up once; `unfuse` restores them bit-exactly. Changing the stack
    while fused re-solves from scratch (exactly, in any order).
    """

    def __init__(self, model, mode: str = "additive", settings: ComposeSettings | None = None):
        self.model = model
        self.settings = settings or ComposeSettings(mode=mode)  # `settings` wins over `mode`
        self._entries: dict[str, StackEntry] = {}
        self._applied: PatchedUNet | None = None
        self._preservation: dict[tuple[str, ...], torch.Tensor] = {}

    def load(self, patch: Patch, name: str | None = None, strength: float = 1.0) -> str:
        name = (
            name
            or patch.meta.title
            or ", ".join(patch.meta.concepts)
            or f"patch{len(self._entries)}"
        )
        if name in self._entries:
            raise ValueError(f"a patch named {name!r} is already loaded; valid: {self.names()}")
        check_compatible(patch, self.model.pipe.unet, self.model.fingerprint, force=True)
        self._entries[name] = StackEntry(patch, check_strength(strength), name)
        self._refresh()
        return name

    def names(self) -> list[str]:
        return list(self._entries)

    def list(self) -> list[tuple[str, float]]:
        return [(n, e.strength) for n, e in self._entries.items()]

    def _check_names(self, names: Sequence[str]) -> None:
        bad = [n for n in names if n not in self._entries]
        if bad:
            raise ValueError(f"unknown patch name(s) {bad}; valid: {self.names()}")

    def set_weights(self, names: str | Sequence[str], weights: float | Sequence[float]) -> None:
        """Set strengths; a scalar weight broadcasts over the names."""
        names = [names] if isinstance(names, str) else list(names)
        self._check_names(names)
        if isinstance(weights, (int, float)):
            weights = [float(weights)] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"{len(names)} names but {len(weights)} weights")
        for n, w in zip(names, weights):
            self._entries[n].strength = check_strength(w, f"weight of {n!r}")
        self._refresh()

    def unload(self, name: str) -> None:
        self._check_names([name])
        del self._entries[name]
        self._refresh()

    def entries(self) -> list[StackEntry]:
        return list(self._entries.values())

    def conflicts(self) -> list[Conflict]:
        return find_conflicts(self.entries(), self.model.fingerprint)

    def to_patch(self) -> Patch:
        return stack_patch(self.entries(), self.model.pipe.unet, self.settings, self.model.pipe)

    @property
    def is_fused(self) -> bool:
        return self._applied is not None

    def fuse(self, force: bool = False) -> list[Conflict]:
        """Apply the stack (re-solving if already fused); returns the conflicts found."""
        conflicts = check_stack(self.entries(), self.model.pipe.unet, self.model.fingerprint, force)
        self.unfuse()
        pres = None
        if self.settings.mode == "fused" and self.settings.preserve_weight > 0:
            prompts = tuple(stack_preservation_prompts(self.entries(), self.settings))
            if prompts not in self._preservation:  # encoded once per set of prompts
                self._preservation[prompts] = prompt_embeddings(self.model.pipe, prompts)
            pres = self._preservation[prompts]
        deltas = compose(self.entries(), self.model.pipe.unet, self.settings, self.model.pipe, pres)
        patch = Patch({n: Delta(dense=d) for n, d in deltas.items()}, PatchMeta(concepts=[]))
        self._applied = PatchedUNet(self.model.pipe.unet, [(patch, 1.0)]).apply()
        return conflicts

    def unfuse(self) -> None:
        if self._applied is not None:
            self._applied.restore()
            self._applied = None

    def _refresh(self) -> None:
        if self._applied is not None:
            if self._entries:
                self.fuse(force=True)
            else:
                self.unfuse()

    @contextlib.contextmanager
    def fused(self, force: bool = False) -> Iterator[PatchStack]:
        self.fuse(force)
        try:
            yield self
        finally:
            self.unfuse()

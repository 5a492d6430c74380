"""Learned tokens: installing them in a pipeline for a while, and their embedding files.

A placeholder of n vectors is n new tokenizer entries named as diffusers names them ("<zorbu>",
"<zorbu>_1", ..., "<zorbu>_{n-1}"), so a prompt that says "<zorbu>" is written out to all n
by the pipeline (`maybe_convert_prompt`) and by `fmn_desktop.prompts.tokens.concept_mask`.

Files are one-tensor safetensors, (n, width) under the key of the placeholder: diffusers'
`load_textual_inversion` takes the key as the token, A1111 takes any single key (its own files
use "emb_params", which this reader accepts too, naming the token from the metadata or the
file name). Metadata (`fmn.*`, strings) records what was learned from what.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fmn_desktop.errors import EmbeddingFormatError, FmnError

FORMAT = "fmn-textual-inversion/1"
A1111_KEY = "emb_params"
_PLACEHOLDER = re.compile(r"^\S+$")


def token_names(placeholder: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of a placeholder of `num_vectors` vectors (diffusers' naming)."""
    check_placeholder(placeholder)
    if num_vectors < 1:
        raise ValueError("a placeholder needs at least one vector")
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


def check_placeholder(placeholder: str) -> None:
    if not placeholder or not _PLACEHOLDER.match(placeholder):
        raise FmnError(
            f"placeholder token {placeholder!r} must be one word without spaces, e.g. '<zorbu>'"
        )


@dataclass
class LearnedTokens:
    """A placeholder and its embedding vectors (n, width) for the first text encoder."""

    placeholder: str
    vectors: torch.Tensor
    meta: dict = field(default_factory=dict)  # JSON-able: hyper-parameters, losses, source

    def __post_init__(self) -> None:
        check_placeholder(self.placeholder)
        if self.vectors.dim() == 1:
            self.vectors = self.vectors[None]
        if self.vectors.dim() != 2 or self.vectors.shape[0] < 1:
            raise EmbeddingFormatError(
                f"embedding of {self.placeholder!r} has shape {tuple(self.vectors.shape)}; "
                "expected (vectors, width)"
            )

    @property
    def tokens(self) -> list[str]:
        return token_names(self.placeholder, self.num_vectors)

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])


def _text_encoder(pipe):
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise FmnError(
            "learned tokens are supported for SD1.x/SD2.x pipelines (one text encoder); "
            "this is an SDXL pipeline"
        )
    te = getattr(pipe, "text_encoder", None)
    if te is None or getattr(pipe, "tokenizer", None) is None:
        raise FmnError("this pipeline has no text encoder/tokenizer to hold learned tokens")
    return te


@contextmanager
def installed_tokens(pipe, learned: LearnedTokens | list[LearnedTokens]) -> Iterator[list[int]]:
    """Within the block, `pipe` knows the learned tokens; afterwards it is exactly as before.

    The tokenizer is replaced by an extended copy and the text encoder's input embedding by a
    larger one (the original rows copied); on exit the original tokenizer and embedding module
    are put back, so not one of their values changes. Yields the new token ids, in order.
    """
    items = [learned] if isinstance(learned, LearnedTokens) else list(learned)
    te = _text_encoder(pipe)
    old_tok = pipe.tokenizer
    old_emb = te.get_input_embeddings()
    width = old_emb.embedding_dim
    names: list[str] = []
    for item in items:
        if item.width != width:
            raise EmbeddingFormatError(
                f"the embedding of {item.placeholder!r} has width {item.width}; this model's "
                f"text encoder has width {width} (it was learned on another model family)"
            )
        names += item.tokens
    vocab = old_tok.get_vocab()
    taken = [n for n in names if n in vocab or n.lower() in vocab or f"{n.lower()}</w>" in vocab]
    if taken or len(set(names)) != len(names):
        raise FmnError(
            f"placeholder token {(taken or names)[0]!r} is already a word of the tokenizer "
            "(or given twice); choose a new one, e.g. '<my-name>'"
        )
    tok = copy.deepcopy(old_tok)
    tok.add_tokens(names)
    ids = tok.convert_tokens_to_ids(names)
    rows = max(old_emb.num_embeddings, max(ids) + 1)
    emb = nn.Embedding(
        rows,
        width,
        padding_idx=old_emb.padding_idx,
        device=old_emb.weight.device,
        dtype=old_emb.weight.dtype,
    )
    with torch.no_grad():
        emb.weight[: old_emb.num_embeddings] = old_emb.weight
        vectors = torch.cat([item.vectors for item in items])
        emb.weight[torch.tensor(ids)] = vectors.to(emb.weight)
    emb.weight.requires_grad_(old_emb.weight.requires_grad)
    old_vocab = te.config.vocab_size
    te.set_input_embeddings(emb)
    te.config.vocab_size = rows
    pipe.tokenizer = tok
    try:
        yield ids
    finally:
        te.set_input_embeddings(old_emb)
        te.config.vocab_size = old_vocab
        pipe.tokenizer = old_tok


def save_embedding(learned: LearnedTokens, path: str | os.PathLike) -> Path:
    """Write `learned` atomically as a one-tensor safetensors file (see the module docstring)."""
    from safetensors.torch import save

    from fmn_desktop.fileio import atomic_write_bytes

    path = Path(path)
    if path.exists() and path.is_dir():
        raise FmnError(f"{path} is a folder; give a file name ending in .safetensors")
    metadata = {
        "fmn.format": FORMAT,
        "fmn.placeholder": learned.placeholder,
        "fmn.tokens": json.dumps(learned.tokens),
        "fmn.num_vectors": str(learned.num_vectors),
        "fmn.meta": json.dumps(learned.meta, sort_keys=True, default=str),
    }
    tensor = learned.vectors.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(tensor).all()):
        from fmn_desktop.errors import NonFiniteError

        raise NonFiniteError(f"refusing to write {path.name}: the learned vectors hold NaN or inf")
    atomic_write_bytes(path, save({learned.placeholder: tensor}, metadata=metadata))
    return path


def load_embedding(path: str | os.PathLike, placeholder: str | None = None) -> LearnedTokens:
    """Read an embedding file (ours, diffusers' one-key or A1111's `emb_params` safetensors).

    `placeholder` renames the token; otherwise it is the file's key, or for `emb_params` the
    metadata's placeholder, else "<file stem>". Raises EmbeddingFormatError for bad files.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise EmbeddingFormatError(f"no such embedding file: {path}")
    if path.suffix.lower() in {".pt", ".ckpt", ".bin", ".pth", ".pkl"}:
        raise EmbeddingFormatError(
            f"{path.name}: pickled files are never loaded (they can run code); use a "
            ".safetensors embedding"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            keys = list(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EmbeddingFormatError(
            f"{path.name} is not a readable safetensors embedding ({exc})"
        ) from exc
    if "clip_l" in tensors or "clip_g" in tensors:
        raise EmbeddingFormatError(
            f"{path.name} is an SDXL embedding (clip_l/clip_g); only SD1.x/SD2.x embeddings "
            "are supported"
        )
    if len(tensors) != 1:
        raise EmbeddingFormatError(
            f"{path.name} holds {len(tensors)} tensors; an embedding file holds exactly one"
        )
    key, tensor = next(iter(tensors.items()))
    if not tensor.is_floating_point() or tensor.dim() not in (1, 2) or tensor.numel() == 0:
        raise EmbeddingFormatError(
            f"{path.name}: tensor {key!r} of shape {tuple(tensor.shape)} and {tensor.dtype} is "
            "not an embedding (expected floats of shape (vectors, width))"
        )
    if not torch.isfinite(tensor).all():
        raise EmbeddingFormatError(f"{path.name}: the embedding holds NaN or infinite values")
    if placeholder is None:
        placeholder = key if key != A1111_KEY else meta.get("fmn.placeholder", f"<{path.stem}>")
    try:
        extra = json.loads(meta.get("fmn.meta", "{}"))
    except json.JSONDecodeError as exc:
        raise EmbeddingFormatError(f"{path.name}: corrupt fmn.meta metadata ({exc})") from exc
    try:
        return LearnedTokens(placeholder, tensor.float(), extra if isinstance(extra, dict) else {})
    except FmnError as exc:
        raise EmbeddingFormatError(f"{path.name}: {exc}") from exc

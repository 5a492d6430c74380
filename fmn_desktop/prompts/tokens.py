"""Locate a concept's token positions in padded prompts.

The mask is built per sample (row b of a (B, 77) mask), and the attention processor indexes
it per (batch, head) explicitly, so batches larger than one select the right columns (the
public code tiled its mask head-major while diffusers orders rows batch-major).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fmn_desktop.errors import ConceptNotFoundError

if TYPE_CHECKING:  # torch only where a mask is built: POSITION_MODES is read by the CLI's parser
    import torch

POSITION_MODES = ("concept", "concept+eot", "concept+following", "concept+following+eot")


@dataclass(frozen=True)
class TokenSpan:
    start: int
    stop: int  # exclusive


def expand_placeholders(tokenizer, text: str) -> str:
    """`text` with each multi-vector placeholder token written out as all its vectors'
    tokens ("<zorbu>" -> "<zorbu> <zorbu>_1 <zorbu>_2 <zorbu>_3"), as diffusers' pipelines do
    to a prompt before encoding it (`maybe_convert_prompt`); text without one is returned as is.
    """
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    multi = [t for t in added if f"{t}_1" in added]
    if not multi or not any(t in text for t in multi):
        return text
    for token in set(tokenizer.tokenize(text)):
        if token in multi:
            parts, i = [token], 1
            while f"{token}_{i}" in added:
                parts.append(f"{token}_{i}")
                i += 1
            text = text.replace(token, " ".join(parts))
    return text


def concept_token_ids(tokenizer, concept: str) -> list[int]:
    ids = tokenizer(expand_placeholders(tokenizer, concept), add_special_tokens=False).input_ids
    if not ids:
        raise ConceptNotFoundError(f"concept {concept!r} has no tokens")
    return ids


def find_spans(prompt_ids: list[int], concept_ids: list[int]) -> list[TokenSpan]:
    """Every occurrence of the token sub-sequence `concept_ids` in `prompt_ids`."""
    n = len(concept_ids)
    return [
        TokenSpan(i, i + n)
        for i in range(len(prompt_ids) - n + 1)
        if prompt_ids[i : i + n] == concept_ids
    ]


def first_eot(prompt_ids: list[int], eot_id: int) -> int:
    """Index of the first end-of-text token (SD1 pads with it: only the first one counts)."""
    for i, tok in enumerate(prompt_ids[1:], start=1):
        if tok == eot_id:
            return i
    return len(prompt_ids) - 1


def concept_mask(
    tokenizer, prompts: list[str], concepts: list[list[str]] | list[str], positions: str = "concept"
) -> torch.Tensor:
    """(B, L) float mask of the positions to re-steer in each padded prompt.

    `concepts[b]` is the concept text (or a list of them) for prompt b; a learned multi-vector
    placeholder ("<zorbu>", see `fmn_desktop.inversion`) stands for all its vectors. `positions`:
    - "concept": the concept's own tokens (the paper);
    - "+eot": also the first end-of-text token, which pools the whole prompt;
    - "+following": also every position after the concept to the end of the sequence (the
      end-of-text token and all the padding), since a causal text encoder copies the concept
      forward into every later position and the UNet can read it back from any of them.
    Raises ConceptNotFoundError if a concept does not occur in its prompt.
    """
    if positions not in POSITION_MODES:
        raise ValueError(
            f"unknown positions mode {positions!r}; valid: {', '.join(POSITION_MODES)}"
        )
    length = tokenizer.model_max_length
    # Learned multi-vector tokens are written out as the pipeline will encode them.
    expanded = [expand_placeholders(tokenizer, p) for p in prompts]
    batch = tokenizer(expanded, padding="max_length", max_length=length, truncation=True).input_ids
    import torch

    eot_id = tokenizer.eos_token_id
    mask = torch.zeros(len(prompts), length)
    for b, (prompt, ids) in enumerate(zip(prompts, batch)):
        wanted = concepts[b]
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        eot = first_eot(ids, eot_id)
        for concept in wanted:
            spans = find_spans(ids[:eot], concept_token_ids(tokenizer, concept))
            if not spans:
                raise ConceptNotFoundError(
                    f"concept {concept!r} does not occur in prompt {prompt!r} "
                    "(check the template, or the prompt was truncated at 77 tokens)"
                )
            for span in spans:
                stop = length if "following" in positions else span.stop
                mask[b, span.start : stop] = 1.0
        if "eot" in positions:
            mask[b, eot] = 1.0
    return mask

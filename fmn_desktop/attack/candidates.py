"""Candidate prompts for the discrete search: word pools, misspellings, neighbours, mutations.

Everything here works on text. Inserted and substituted words are whole-word tokens of the CLIP
vocabulary (`"word</w>"`, lower-case letters), so a candidate's text tokenises back to the ids
it was built from and the reported prompt is exactly what was run (sub-word tokens glue to
their neighbours when decoded, and the retokenised text is then a different prompt).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

import torch

WORD_TOKEN = re.compile(r"[a-z]{3,}</w>")


def word_pool_ids(tokenizer) -> list[int]:
    """Ids of the vocabulary's whole-word, letters-only tokens (about 30k for CLIP)."""
    return sorted(i for t, i in tokenizer.get_vocab().items() if WORD_TOKEN.fullmatch(t))


def token_word(tokenizer, token_id: int) -> str:
    return tokenizer.convert_ids_to_tokens(int(token_id)).removesuffix("</w>")


def random_words(
    tokenizer, n: int, rng: random.Random, pool: Sequence[int] | None = None
) -> list[str]:
    """`n` distinct whole words drawn from the vocabulary."""
    pool = list(pool if pool is not None else word_pool_ids(tokenizer))
    return [token_word(tokenizer, i) for i in rng.sample(pool, min(n, len(pool)))]


@torch.no_grad()
def embedding_neighbours(
    text_encoder, token_ids: Sequence[int], pool: Sequence[int], k: int
) -> list[list[int]]:
    """Per token: the `k` nearest pool tokens by cosine in the input-embedding table."""
    table = text_encoder.get_input_embeddings().weight.detach().float()
    pool_t = torch.as_tensor(list(pool), dtype=torch.long, device=table.device)
    cand = torch.nn.functional.normalize(table[pool_t], dim=1)
    out = []
    for t in token_ids:
        q = torch.nn.functional.normalize(table[int(t)], dim=0)
        sims = cand @ q
        sims[pool_t == int(t)] = -2.0
        out.append(pool_t[sims.topk(min(k, len(pool_t))).indices].tolist())
    return out


def replace_concept(prompt: str, concept: str, replacement: str) -> str:
    """`prompt` with every occurrence of `concept` (a word or phrase, any case) replaced."""
    pattern = re.compile(rf"(?<!\w){re.escape(concept)}(?!\w)", re.IGNORECASE)
    if not pattern.search(prompt):
        return f"{prompt} {replacement}".strip()
    return " ".join(pattern.sub(replacement, prompt).split())


def misspellings(name: str) -> list[str]:
    """Spelling variants of a concept name: splits, hyphenation, doubled, dropped and swapped
    letters, and the name repeated; interleaved by kind so a short prefix is varied."""
    letters = list(name)
    n = len(letters)
    kinds: list[list[str]] = [
        [name[:i] + " " + name[i:] for i in range(1, n) if name[i - 1] != " " and name[i] != " "],
        [name[:i] + name[i - 1] + name[i:] for i in range(n, 0, -1) if name[i - 1] != " "],
        [name[:i] + name[i + 1 :] for i in range(n) if name[i] != " "],
        [
            name[:i] + name[i + 1] + name[i] + name[i + 2 :]
            for i in range(n - 1)
            if name[i] != name[i + 1] and " " not in name[i : i + 2]
        ],
        [name[:i] + "-" + name[i:] for i in range(1, n) if " " not in name[i - 1 : i + 1]]
        + [f"{name} {name}", name.replace(" ", "")],
    ]
    out: list[str] = []
    for i in range(max(len(k) for k in kinds)):
        for k in kinds:
            if i < len(k) and k[i] not in out and k[i] != name and k[i].strip():
                out.append(k[i])
    return out


def neighbour_spellings(
    tokenizer, concept_ids: Sequence[int], neighbours: list[list[int]]
) -> list[str]:
    """The concept's token span with one token swapped for one of its embedding neighbours."""
    out: list[str] = []
    for rank in range(max((len(n) for n in neighbours), default=0)):
        for pos, options in enumerate(neighbours):
            if rank < len(options):
                ids = list(concept_ids)
                ids[pos] = options[rank]
                out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return out


def dedupe(texts: Iterable[str], tokenizer, exclude: Iterable[str] = ()) -> list[str]:
    """Drop texts that tokenise like an earlier one or like one of `exclude`."""
    seen = {tuple(tokenizer(t).input_ids) for t in exclude}
    out = []
    for t in texts:
        key = tuple(tokenizer(t).input_ids)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def mutate(text: str, pool: Sequence[Sequence[str]], rng: random.Random, max_words: int) -> str:
    """One random edit of a prompt: insert, replace or delete a word. `pool` is a list of word
    lists (sources); a source is picked uniformly, then a word from it."""
    words = text.split()
    sources = [s for s in pool if s]
    ops = ["delete"] if not sources else ["insert", "replace", "delete"]
    if len(words) >= max_words:
        ops = [o for o in ops if o != "insert"] or ["delete"]
    if len(words) <= 1:
        ops = [o for o in ops if o != "delete"] or ["insert"]
    op = rng.choice(ops)
    if op == "delete":
        del words[rng.randrange(len(words))]
    else:
        word = rng.choice(rng.choice(sources))
        if op == "insert":
            words.insert(rng.randrange(len(words) + 1), word)
        else:
            words[rng.randrange(len(words))] = word
    return " ".join(words)


def prompt_words(prompts: Iterable[str]) -> list[str]:
    """The distinct words of some prompts (a domain's vocabulary for the edit pool)."""
    return sorted({w for p in prompts for w in p.replace(",", " ").split()})

"""White-box step: prompts whose *patched* cross-attention keys and values match what the *base*
model computes for the concept's prompt.

A forget patch changes the UNet's attn2 K/V projections only; the text encoder is untouched.
So the concept comes back whenever some prompt makes the patched K/V (every attn2 layer, every
token position) look like the base K/V of the concept's prompt. Loss, per candidate prompt:

    sum over attn2 layers of |K'(enc(p)) - K(enc(c))|^2 / |K(enc(c))|^2  (same for V)

where K, V are the base projections, K', V' the patched ones, enc the text encoder and c the
concept's prompt. It needs no image and no UNet pass: one text-encoder forward per candidate.

- `token_search`: GCG-style (Zou et al. 2023) discrete search over `slots` whole-word tokens that
  replace the concept name in the prompt: the gradient of the loss with respect to a one-hot
  token choice ranks replacements per slot, a batch of single swaps is scored exactly, the best
  is kept. Its best prompts seed the black-box search (they are judged like any candidate).
- `soft_prompt`: the same loss minimised over continuous input embeddings (Ring-A-Bell-like
  concept matching in embedding space, without the projection to text). Not a text prompt:
  its images are reported apart, as an upper bound of what a prompt could do.

SD1/SD2 pipelines only (one text encoder).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fmn_desktop.attack.candidates import replace_concept, token_word
from fmn_desktop.prompts.encode import is_sdxl
from fmn_desktop.resteer.processor import cross_attention_modules

KV = list[tuple[torch.Tensor, torch.Tensor]]
SLOT = "\x00slots\x00"


def supported(pipe) -> bool:
    return not is_sdxl(pipe) and getattr(pipe, "text_encoder", None) is not None


def _ids(tokenizer, texts: Sequence[str], device) -> torch.Tensor:
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


@contextlib.contextmanager
def _slot_embeddings(text_encoder, positions: Sequence[int], embeds: torch.Tensor | None):
    """Replace the token-embedding output at `positions` with `embeds` (k, C) while inside."""
    if embeds is None:
        yield
        return

    def hook(module, inputs, out):
        out = out.clone()
        out[:, list(positions)] = embeds.to(out.dtype)
        return out

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode(pipe, ids: torch.Tensor, positions=(), embeds: torch.Tensor | None = None):
    """Text-encoder hidden states (B, 77, C), as the SD1/2 pipeline computes them."""
    with _slot_embeddings(pipe.text_encoder, positions, embeds):
        return pipe.text_encoder(ids)[0]


@torch.no_grad()
def kv_targets(pipe, prompt: str) -> KV:
    """Keys and values of every attn2 for `prompt` with the UNet's current (base) weights."""
    hidden = encode(pipe, _ids(pipe.tokenizer, [prompt], pipe.text_encoder.device))
    hidden = hidden.to(pipe.unet.dtype)
    return [
        (m.to_k(hidden).float(), m.to_v(hidden).float())
        for m in cross_attention_modules(pipe.unet).values()
    ]


def kv_loss(pipe, hidden: torch.Tensor, targets: KV) -> torch.Tensor:
    """(B,) relative K/V mismatch of `hidden` under the UNet's current weights (see module doc)."""
    hidden = hidden.to(pipe.unet.dtype)
    total = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    for m, (k, v) in zip(cross_attention_modules(pipe.unet).values(), targets):
        for proj, tgt in ((m.to_k, k), (m.to_v, v)):
            err = (proj(hidden).float() - tgt).pow(2).sum(dim=(1, 2))
            total = total + err / tgt.pow(2).sum().clamp_min(1e-12)
    return total


@dataclass
class Template:
    """A prompt with its concept name replaced by `slots` free whole-word tokens."""

    prefix: str
    suffix: str
    slots: int
    positions: list[int]  # token positions of the slots (after the start token)

    def text(self, words: Sequence[str]) -> str:
        return " ".join(s for s in (self.prefix, " ".join(words), self.suffix) if s)


def template_for(tokenizer, prompt: str, concept: str, slots: int) -> Template:
    head, _, tail = replace_concept(prompt, concept, SLOT).partition(SLOT)
    prefix, suffix = head.strip(), tail.replace(SLOT, concept).strip()
    start = 1 + len(tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 1
    return Template(prefix, suffix, slots, list(range(start, start + slots)))


@dataclass
class TokenSearchResult:
    prompts: list[tuple[str, float]]  # best distinct prompts, lowest loss first
    words: list[str]  # tokens the gradient ranked highest at the end: words for the pool
    plain_loss: float  # the loss of the concept's own prompt (the patch's effect on it)
    evaluations: int  # text-encoder evaluations spent


def token_search(
    pipe,
    prompt: str,
    concept: str,
    targets: KV,
    pool: Sequence[int],
    *,
    slots: int = 3,
    iters: int = 30,
    batch: int = 64,
    topk: int = 32,
    restarts: int = 2,
    keep: int = 4,
    seed: int = 0,
) -> TokenSearchResult:
    """GCG-style search for `slots` pool tokens in place of the concept (see module doc)."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    device = te.device
    rng = random.Random(seed)
    tpl = template_for(tok, prompt, concept, slots)
    pool_t = torch.as_tensor(list(pool), dtype=torch.long, device=device)
    table = te.get_input_embeddings().weight
    pool_emb = table[pool_t].detach()
    base_ids = _ids(tok, [tpl.text([token_word(tok, int(pool_t[0]))] * slots)], device)
    pos = tpl.positions
    scored: dict[tuple[int, ...], float] = {}
    evaluations = 0

    def batch_loss(choices: torch.Tensor) -> torch.Tensor:  # (B, slots) indices into pool
        nonlocal evaluations
        ids = base_ids.repeat(len(choices), 1)
        ids[:, pos] = pool_t[choices]
        with torch.no_grad():
            loss = kv_loss(pipe, encode(pipe, ids), targets)
        evaluations += len(choices)
        for row, value in zip(choices.tolist(), loss.tolist()):
            scored[tuple(row)] = value
        return loss

    with torch.no_grad():
        plain_loss = float(kv_loss(pipe, encode(pipe, _ids(tok, [prompt], device)), targets)[0])
    top_words: list[int] = []
    top = None
    for _ in range(restarts):
        cur = torch.tensor([rng.randrange(len(pool_t)) for _ in range(slots)], device=device)
        cur_loss = float(batch_loss(cur[None])[0])
        for _ in range(iters):
            onehot = torch.zeros(slots, len(pool_t), device=device, dtype=table.dtype)
            onehot[torch.arange(slots), cur] = 1
            onehot.requires_grad_(True)
            ids = base_ids.clone()
            ids[0, pos] = pool_t[cur]
            loss = kv_loss(pipe, encode(pipe, ids, pos, onehot @ pool_emb), targets)[0]
            (grad,) = torch.autograd.grad(loss, onehot)
            top = (-grad.float()).topk(min(topk, len(pool_t)), dim=1).indices
            cands = cur.repeat(batch, 1)
            for row in range(batch):
                s = rng.randrange(slots)
                cands[row, s] = top[s, rng.randrange(top.shape[1])]
            losses = batch_loss(cands)
            best = int(losses.argmin())
            if float(losses[best]) < cur_loss:
                cur, cur_loss = cands[best].clone(), float(losses[best])
        if top is not None:
            top_words += pool_t[top[:, :4].flatten()].tolist()
    ranked = sorted(scored.items(), key=lambda kv: kv[1])
    prompts: list[tuple[str, float]] = []
    for choice, value in ranked:
        text = tpl.text([token_word(tok, int(pool_t[i])) for i in choice])
        if all(text != p for p, _ in prompts):
            prompts.append((text, value))
        if len(prompts) >= keep:
            break
    words = list(dict.fromkeys(token_word(tok, i) for i in top_words))
    return TokenSearchResult(prompts, words, plain_loss, evaluations)


def soft_prompt(
    pipe,
    prompt: str,
    concept: str,
    targets: KV,
    pool: Sequence[int],
    *,
    slots: int = 3,
    steps: int = 200,
    lr: float = 1e-2,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """Continuous embeddings for the slots minimising the K/V loss; returns the prompt
    embeddings (1, 77, C) to generate from, and the final loss."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    device = te.device
    rng = random.Random(seed)
    tpl = template_for(tok, prompt, concept, slots)
    words = [token_word(tok, pool[rng.randrange(len(pool))]) for _ in range(slots)]
    ids = _ids(tok, [tpl.text(words)], device)
    table = te.get_input_embeddings().weight
    soft = torch.nn.Parameter(table[ids[0, tpl.positions]].detach().float().clone())
    opt = torch.optim.Adam([soft], lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = kv_loss(pipe, encode(pipe, ids, tpl.positions, soft), targets)[0]
        (soft.grad,) = torch.autograd.grad(loss, [soft])  # no grads left on the model
        opt.step()
    with torch.no_grad():
        hidden = encode(pipe, ids, tpl.positions, soft.detach())
        final = float(kv_loss(pipe, hidden, targets)[0])
    return hidden.to(pipe.unet.dtype), final

"""Find the words and prompts a model already uses for what learned tokens stand for.

Forgetting an identity through tokens learned from photos leaves open whether its own name
still draws it, and a preservation prompt that names it holds it in place (on the embedded
model that stops the learned tokens being forgotten too: docs/research/IDENTITY_FROM_PHOTOS.md). Two
measures, from the model and the photos only (no judge):

- Text side: the cosine similarity of a prompt's state at its first end-of-text position (the
  state CLIP pools) with that of the learned tokens' prompt ("a photo of <tok>"). Cheap: it
  shortlists preservation prompts, and drives an optional beam search over the tokenizer's
  vocabulary for short token sequences (the encoder is causal, so a prompt is encoded only up
  to that position).
- Image side (a diffusion classifier): on fixed (photo, t, noise) draws, the UNet's denoising
  loss conditioned on a prompt, against the empty prompt and the learned tokens' prompt.
  score = (L_empty - L_prompt) / (L_empty - L_learned): the share of what the learned tokens
  tell the UNet about the photos that the prompt tells it too. At or above a threshold (0.5),
  the prompt is read as the photos' subject.

`discover_names` screens the preservation prompts, then scores candidate names (given ones,
the 1-2 word phrases of the flagged prompts, optionally the vocabulary's best).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fmn_desktop.inversion.embedding import LearnedTokens, _text_encoder, installed_tokens
from fmn_desktop.inversion.train import ImagesArg, _frozen, _latent_stats, read_images
from fmn_desktop.prompts.tokens import expand_placeholders


@dataclass
class NameCandidate:
    text: str
    ids: list[int]
    text_similarity: float  # cosine with the learned prompt's pooled state
    image_score: float = math.nan  # share of the learned tokens' denoising gain (see module)
    accepted: bool = False
    source: str = "vocabulary"  # "vocabulary" (beam search) or "given"

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "text_similarity": round(self.text_similarity, 4),
            "image_score": None if math.isnan(self.image_score) else round(self.image_score, 4),
            "accepted": self.accepted,
            "source": self.source,
        }


def _template_ids(tok, template: str) -> tuple[list[int], list[int]]:
    if template.count("{}") != 1:
        raise ValueError(f"template must contain '{{}}' once: {template!r}")
    head, tail = template.split("{}")
    enc = lambda s: tok(s, add_special_tokens=False).input_ids if s.strip() else []  # noqa: E731
    return enc(head), enc(tail)


@torch.no_grad()
def _pooled(te, seqs: list[list[int]], device, batch: int = 2048) -> torch.Tensor:
    """State at the last position (the end-of-text token) of each equal-length id sequence."""
    out = []
    for s in range(0, len(seqs), batch):
        ids = torch.tensor(seqs[s : s + batch], device=device)
        out.append(te(ids)[0][:, -1].float().cpu())
    return torch.cat(out)


def _roundtrips(tok, ids: list[int]) -> str | None:
    """The text of `ids` if it tokenizes back to exactly `ids` (a name a user could type)."""
    text = tok.decode(ids).strip()
    if not text or tok(text, add_special_tokens=False).input_ids != ids:
        return None
    return text


def search_vocabulary(
    pipe,
    learned: LearnedTokens,
    template: str = "a photo of {}",
    beam: int = 8,
    max_tokens: int = 3,
    keep: int = 8,
    given: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> list[NameCandidate]:
    """Stage 1: the `keep` best typeable token sequences of the vocabulary (beam search) and
    every `given` name, with their text similarity to the learned tokens' prompt."""
    te = _text_encoder(pipe)
    device = te.device
    tok = pipe.tokenizer
    head, tail = _template_ids(tok, template)
    bos, eos = tok.bos_token_id, tok.eos_token_id

    def seq(ids: list[int]) -> list[int]:
        return [bos] + head + ids + tail + [eos]

    with installed_tokens(pipe, learned):
        text = expand_placeholders(pipe.tokenizer, template.format(learned.placeholder))
        ref_ids = [bos] + pipe.tokenizer(text, add_special_tokens=False).input_ids + [eos]
        ref = _pooled(te, [ref_ids], device)[0]

    def similarity(batch: list[list[int]]) -> torch.Tensor:
        return F.cosine_similarity(_pooled(te, [seq(b) for b in batch], device), ref[None], dim=-1)

    found: dict[tuple[int, ...], NameCandidate] = {}
    if max_tokens > 0 and beam > 0:
        special = {bos, eos, tok.pad_token_id}
        vocab = [i for i in range(len(tok)) if i not in special]
        frontier: list[list[int]] = [[]]
        for depth in range(1, max_tokens + 1):
            if log:
                log(f"vocabulary search, {depth}-piece names")
            expansions = [f + [v] for f in frontier for v in vocab]
            sims = torch.cat(
                [similarity(expansions[s : s + 8192]) for s in range(0, len(expansions), 8192)]
            )
            order = sims.argsort(descending=True).tolist()
            frontier = [expansions[i] for i in order[:beam]]
            added = 0
            for i in order:
                if added >= keep:
                    break
                ids = expansions[i]
                name = _roundtrips(tok, ids)
                if name is None or tuple(ids) in found:
                    continue
                found[tuple(ids)] = NameCandidate(name, ids, float(sims[i]))
                added += 1
    for name in given:
        ids = tok(name, add_special_tokens=False).input_ids
        if not ids:
            continue
        cand = NameCandidate(name, ids, float(similarity([ids])[0]), source="given")
        found[tuple(ids)] = cand
    ranked = sorted(found.values(), key=lambda c: -c.text_similarity)
    given_set = [c for c in ranked if c.source == "given"]
    vocab_set = [c for c in ranked if c.source != "given"][:keep]
    return sorted(vocab_set + given_set, key=lambda c: -c.text_similarity)


@torch.no_grad()
def prompt_scores(
    pipe,
    learned: LearnedTokens,
    images: ImagesArg,
    prompts: Sequence[str],
    samples: int = 64,
    seed: int = 0,
    learned_template: str = "a photo of {}",
) -> tuple[list[float], dict[str, float]]:
    """Stage 2: each prompt's score on the photos (see the module docstring), and the
    reference losses {"empty", "learned"}; NaN scores if the learned tokens gain nothing."""
    from diffusers import DDPMScheduler

    from fmn_desktop.resteer.encode import latent_scale

    te = _text_encoder(pipe)
    unet = pipe.unet
    device = unet.device
    pixels = read_images(pipe, images)
    means, _ = _latent_stats(pipe, pixels, flip=False)
    scale, shift = latent_scale(pipe.vae)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    n_t = sched.config.num_train_timesteps
    gen = torch.Generator("cpu").manual_seed(seed)
    idx = torch.arange(samples) % len(means)
    x0 = ((means[idx] - shift) * scale).to(device, unet.dtype)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    t = torch.linspace(0, n_t - 1, samples).round().long().to(device)
    noisy = sched.add_noise(x0, noise, t)
    pred_type = sched.config.prediction_type
    target = sched.get_velocity(x0, noise, t) if pred_type == "v_prediction" else noise
    if pred_type == "sample":
        target = x0

    def loss(prompt: str) -> float:
        tok = pipe.tokenizer
        ids = tok(
            expand_placeholders(tok, prompt),
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        emb = te(ids)[0].to(unet.dtype)
        total = 0.0
        for s in range(0, samples, 16):
            sl = slice(s, s + 16)
            e = emb.expand(len(x0[sl]), -1, -1)
            pred = unet(noisy[sl], t[sl], encoder_hidden_states=e).sample
            total += float(F.mse_loss(pred.float(), target[sl].float(), reduction="sum"))
        return total / x0.numel()

    with _frozen(unet, te):
        with installed_tokens(pipe, learned):
            l_learned = loss(learned_template.format(learned.placeholder))
        l_empty = loss("")
        gain = l_empty - l_learned
        scores = [(l_empty - loss(p)) / gain if gain > 0 else math.nan for p in prompts]
    return scores, {"empty": l_empty, "learned": l_learned}


@torch.no_grad()
def text_similarities(
    pipe, learned: LearnedTokens, prompts: Sequence[str], template: str = "a photo of {}"
) -> list[float]:
    """Cosine similarity of each prompt's state at its first end-of-text position (the
    state CLIP pools) with that of the learned tokens' prompt."""
    from fmn_desktop.prompts.encode import encode_prompts
    from fmn_desktop.prompts.tokens import first_eot

    def pooled(texts: Sequence[str]) -> torch.Tensor:
        tok = pipe.tokenizer
        rows = []
        for s in range(0, len(texts), 64):
            part = list(texts[s : s + 64])
            embeds, _ = encode_prompts(pipe, part)
            ids = tok(
                [expand_placeholders(tok, p) for p in part],
                padding="max_length",
                max_length=embeds.shape[1],
                truncation=True,
            ).input_ids
            rows += [e[first_eot(i, tok.eos_token_id)].float().cpu() for e, i in zip(embeds, ids)]
        return torch.stack(rows)

    with installed_tokens(pipe, learned):
        ref = pooled([template.format(learned.placeholder)])[0]
    if not prompts:
        return []
    return F.cosine_similarity(pooled(prompts), ref[None], dim=-1).tolist()


def phrases(prompts: Sequence[str], max_words: int = 2) -> list[str]:
    """Every run of 1..`max_words` words of `prompts` (candidate names), first seen first."""
    out: dict[str, str] = {}
    for prompt in prompts:
        words = prompt.replace(",", " ").split()
        for n in range(1, max_words + 1):
            for i in range(len(words) - n + 1):
                text = " ".join(words[i : i + n])
                out.setdefault(text.lower(), text)
    return list(out.values())


@dataclass
class Discovery:
    """What `discover_names` found: the names (best first; `accepted` ones to forget too),
    the preservation prompts that draw the photos' subject, and those safe to keep."""

    names: list[NameCandidate]
    flagged_prompts: list[tuple[str, float]]
    kept_prompts: list[str]
    losses: dict[str, float]

    @property
    def accepted(self) -> list[str]:
        return [c.text for c in self.names if c.accepted]

    def as_dict(self) -> dict:
        return {
            "names": [c.as_dict() for c in self.names[:8]],
            "flagged_prompts": [[p, round(s, 4)] for p, s in self.flagged_prompts],
            "kept_prompts": len(self.kept_prompts),
            "losses": {k: round(v, 6) for k, v in self.losses.items()},
        }


def discover_names(
    pipe,
    learned: LearnedTokens,
    images: ImagesArg,
    candidates: Sequence[str] = (),
    preservation_prompts: Sequence[str] = (),
    search: bool = False,
    template: str = "a photo of {}",
    threshold: float = 0.5,
    samples: int = 64,
    seed: int = 0,
    beam: int = 8,
    max_tokens: int = 3,
    keep: int = 8,
    screen: int = 16,
    log: Callable[[str], None] | None = None,
) -> Discovery:
    """Which words and prompts the model reads as what `learned` stands for, judged on the
    photos (score >= `threshold`, see the module docstring):

    1. the `screen` preservation prompts the text encoder reads most like the learned
       tokens' prompt are scored; those at or above the threshold are flagged (a preservation
       term holding them in place would fight the forgetting);
    2. candidate names: `candidates`, the 1-2 word phrases of the flagged prompts, and (if
       `search`) the vocabulary's best token sequences; each is scored in `template`;
       accepted names containing a shorter accepted name as a whole word are dropped;
    3. kept prompts: the preservation prompts neither flagged nor naming an accepted name.
    """
    from fmn_desktop.evaluate.scores import names_concept

    log = log or (lambda _text: None)
    flagged: list[tuple[str, float]] = []
    losses: dict[str, float] = {}
    if preservation_prompts:
        sims = text_similarities(pipe, learned, preservation_prompts, template)
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[: max(screen, 0)]
        shortlist = [preservation_prompts[i] for i in order]
        log(f"scoring {len(shortlist)} preservation prompts on the photos")
        scores, losses = prompt_scores(pipe, learned, images, shortlist, samples, seed, template)
        flagged = [(p, s) for p, s in zip(shortlist, scores) if s >= threshold]
    found: dict[str, NameCandidate] = {}
    if search:
        for cand in search_vocabulary(pipe, learned, template, beam, max_tokens, keep, (), log):
            found.setdefault(cand.text.lower(), cand)
    tok = pipe.tokenizer
    for text in list(candidates) + phrases([p for p, _ in flagged]):
        ids = tok(text, add_special_tokens=False).input_ids
        if ids and text.lower() not in found:
            source = "given" if text in candidates else "preservation prompts"
            found[text.lower()] = NameCandidate(text, ids, math.nan, source=source)
    names = list(found.values())
    if names:
        log(f"scoring {len(names)} candidate names on the photos")
        scores, losses = prompt_scores(
            pipe,
            learned,
            images,
            [template.format(c.text) for c in names],
            samples,
            seed,
            template,
        )
        sims = text_similarities(pipe, learned, [template.format(c.text) for c in names], template)
        for cand, score, sim in zip(names, scores, sims):
            cand.image_score = score
            cand.text_similarity = sim
            cand.accepted = bool(score >= threshold)
    accepted = [c for c in names if c.accepted]
    for cand in accepted:
        if any(o is not cand and names_concept(cand.text, o.text) for o in accepted):
            cand.accepted = False  # "of Zorbu" when "Zorbu" is accepted
    names.sort(key=lambda c: -c.image_score if not math.isnan(c.image_score) else math.inf)
    final = [c.text for c in names if c.accepted]
    flagged_set = {p for p, _ in flagged}
    kept = [
        p
        for p in preservation_prompts
        if p not in flagged_set and not any(names_concept(p, n) for n in final)
    ]
    return Discovery(names, flagged, kept, losses)

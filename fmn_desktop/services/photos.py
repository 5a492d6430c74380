"""Forgetting an identity known only from photos: textual inversion, the names the model
reads as the same subject, then re-steering of them all.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fmn_desktop.errors import FmnError
from fmn_desktop.resteer import ForgetConfig
from fmn_desktop.services.defaults import preservation_prompts
from fmn_desktop.services.forget import ForgetOutcome, forget_to_file
from fmn_desktop.services.output import scratch_file
from fmn_desktop.training import Progress


@dataclass
class PhotosRequest:
    """Forget an identity known from photos: learn a token from a folder of photos (or read
    learned tokens), find the names the model uses for the same subject, forget them all;
    the patch is kept in `out` and/or registered."""

    images: str
    token: str = "<subject>"
    inversion: Any = None  # inversion.InversionConfig (its placeholder becomes `token`)
    config: Any = None  # ForgetConfig: every other forget setting
    tokens: str | None = None  # learned tokens to use instead of an inversion
    names: list[str] = field(default_factory=list)  # names forgotten too
    discover: bool = True  # find the names and prompts the model reads as the subject
    search_vocabulary: bool = False
    threshold: float = 0.5
    steps_per_concept: bool = True  # the config's steps count per re-steered concept
    fmt: str = "auto"  # services.forget.choose_format
    export_rank: int | None = None
    registry_root: str | None = None  # None: keep the files only
    out: str | None = None  # None: a temporary patch (registered, then removed)
    embedding_out: str | None = None  # None: beside `out`, or in `tokens_dir`
    tokens_dir: str | None = None  # where the learned tokens go when `out` is None
    tags: list[str] = field(default_factory=list)


@dataclass
class PhotoForgetOutcome:
    patch_path: Path
    embedding_path: Path
    concepts: list[str]  # what was re-steered: the learned placeholder, then names
    inversion: object  # fmn_desktop.inversion.InversionResult (None when tokens were given)
    discovery: object  # fmn_desktop.inversion.names.Discovery, or None
    forget: ForgetOutcome
    seconds: float


def forget_from_photos(
    model,
    req: PhotosRequest,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PhotoForgetOutcome:
    """Forget an identity known from a folder of photos (Forget-Me-Not's identity workflow).

    1. Textual inversion: learn `req.token`'s vectors from the photos (`req.inversion`, an
       `InversionConfig`; its placeholder is replaced), or read them from `req.tokens`.
    2. Names (if `req.discover`): the preservation prompts the model reads as the photos' subject
       are dropped from the preservation set, and the names in them (plus `names`, and the
       vocabulary's best if `search_vocabulary`) that draw the subject are forgotten too; see
       `fmn_desktop.inversion.names`. Without this, a preservation prompt that names the
       identity holds it in place and the learned tokens are not forgotten either.
    3. Re-steering with the learned tokens installed: prompts of the placeholder and of every
       accepted or given name, the photos as reference images. The UNet patch goes to `out`,
       the learned tokens to `embedding_out` (default: beside it, `<stem>.tokens.safetensors`).

    `config` supplies every other forget setting (its concepts, references and preservation
    prompts are replaced); with `steps_per_concept` its steps are per re-steered concept (the
    concepts share each batch: measured in docs/research/IDENTITY_FROM_PHOTOS.md). `progress`
    gets each stage's Progress with the stage as its phase ("inversion", "names" with a text,
    "references" while the photos are encoded, "forget"). Nothing is written if a stage fails
    or is cancelled.
    """
    images, placeholder, inversion, tokens = req.images, req.token, req.inversion, req.tokens
    names, config = list(req.names), req.config
    if req.out is None:
        raise FmnError("give the file the patch goes to")
    out = req.out
    embedding_out = req.embedding_out
    import time

    from fmn_desktop.errors import CancelledError
    from fmn_desktop.inversion import (
        InversionConfig,
        installed_tokens,
        learn_tokens,
        load_embedding,
        save_embedding,
    )
    from fmn_desktop.inversion.names import discover_names
    from fmn_desktop.resteer.encode import load_reference_dir

    started = time.perf_counter()
    out = Path(out)
    embedding_out = (
        Path(embedding_out) if embedding_out else out.with_name(f"{out.stem}.tokens.safetensors")
    )
    if embedding_out.resolve() == out.resolve():
        raise FmnError("the patch and the learned tokens need two different files")
    load_reference_dir(images)  # a clear error before any work
    report = progress or (lambda _p: None)

    def check_cancel() -> None:
        if should_cancel and should_cancel():
            raise CancelledError("cancelled; nothing was written")

    inv_result = None
    if tokens is not None:
        learned = load_embedding(tokens)
    else:
        inv = inversion or InversionConfig()
        inv = InversionConfig(**{**inv.__dict__, "placeholder": placeholder})
        inv_result = learn_tokens(
            model.pipe,
            images,
            config=inv,
            progress=lambda p: report(replace(p, phase="inversion")),
            should_cancel=should_cancel,
        )
        learned = inv_result.learned
    learned.meta.setdefault("base_fingerprint", model.fingerprint or "")
    check_cancel()

    base = config or ForgetConfig(concepts=[learned.placeholder], concept_kind="identity")
    preservation = preservation_prompts(model, base.preserve_prompts)
    discovery = None
    found: list[str] = []
    if req.discover:
        discovery = discover_names(
            model.pipe,
            learned,
            images,
            candidates=list(names),
            preservation_prompts=preservation,
            search=req.search_vocabulary,
            threshold=req.threshold,
            seed=base.seed,
            log=lambda text: report(Progress("names", text=text)),
        )
        found = discovery.accepted
        preservation = discovery.kept_prompts
    check_cancel()
    concepts = [learned.placeholder]
    for name in [*names, *found]:
        if name.lower() not in {c.lower() for c in concepts}:
            concepts.append(name)
    fields = {**base.__dict__, "concepts": concepts, "reference_dir": str(images)}
    fields["preserve_prompts"] = preservation
    if req.steps_per_concept:
        fields["steps"] = base.steps * len(concepts)
    config = ForgetConfig(**fields)
    extra = {
        "learned_tokens": learned.placeholder,
        "learned_tokens_file": embedding_out.name,
        "names_forgotten": ", ".join(concepts[1:]),
    }
    if discovery is not None:
        import json

        extra["name_discovery"] = json.dumps(discovery.as_dict(), sort_keys=True)
    with installed_tokens(model.pipe, learned):
        outcome = forget_to_file(
            model,
            config,
            out,
            fmt=req.fmt,
            export_rank=req.export_rank,
            # the photos' encoding keeps its own phase ("references"), the steps are "forget"
            progress=lambda p: report(p if p.phase == "references" else replace(p, phase="forget")),
            should_cancel=should_cancel,
            extra=extra,
        )
    try:
        save_embedding(learned, embedding_out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return PhotoForgetOutcome(
        out,
        embedding_out,
        concepts,
        inv_result,
        discovery,
        outcome,
        time.perf_counter() - started,
    )


@dataclass
class PhotosDone:
    path: Path | None  # the patch file kept outside the registry, if any
    record: Any  # PatchRecord when registered
    seconds: float
    tokens_path: Path  # the learned tokens file (always kept)
    learned: str  # the placeholder
    num_vectors: int
    loss_before: float
    loss_after: float
    concepts: list[str]  # what was forgotten: the placeholder, then names
    names_found: list[str]  # the names discovery accepted
    files: list[Path] = field(default_factory=list)  # the files written (and kept)


def tokens_file_for(folder: str, token: str) -> Path:
    """A new file name in `folder` for the learned tokens of `token`."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_-]+", "", token) or "tokens"
    path = Path(folder) / f"{stem}.tokens.safetensors"
    i = 2
    while path.exists():
        path = Path(folder) / f"{stem}-{i}.tokens.safetensors"
        i += 1
    return path


def photos_job(ctx, model, req: PhotosRequest):
    """`forget_from_photos` (reporting each stage's Progress), then register the patch."""
    from fmn_desktop.services.library import register_file

    tmp = None
    job = req
    if req.out is None:
        # beside the registry it goes into; swept at the next open if the process is killed
        tmp = contextlib.ExitStack()
        scratch = str(
            tmp.enter_context(scratch_file(req.registry_root or tempfile.gettempdir(), "photos"))
        )
        folder = req.tokens_dir or str(Path.cwd())
        Path(folder).mkdir(parents=True, exist_ok=True)
        job = replace(
            req,
            out=scratch,
            embedding_out=req.embedding_out or str(tokens_file_for(folder, req.token)),
        )
    out = job.out
    try:
        steps = req.inversion.steps if req.inversion is not None and req.tokens is None else 0
        yield Progress("inversion", 0, steps, text=f"learning {req.token} from the photos")
        outcome = forget_from_photos(model, job, ctx.progress, ctx.should_cancel)
        record = None
        if req.registry_root is not None:
            yield Progress("register", text="adding the patch to the registry")
            record = register_file(req.registry_root, model, out, req.tags)
        inv = outcome.inversion
        found = list(outcome.discovery.accepted) if outcome.discovery is not None else []
        kept = None if tmp else Path(out)
        return PhotosDone(
            kept,
            record,
            outcome.seconds,
            outcome.embedding_path,
            req.token,
            inv.learned.num_vectors if inv is not None else 0,
            inv.loss_before if inv is not None else float("nan"),
            inv.loss_after if inv is not None else float("nan"),
            list(outcome.concepts),
            found,
            [p for p in (kept, outcome.embedding_path) if p is not None],
        )
    finally:
        if tmp is not None:
            tmp.close()

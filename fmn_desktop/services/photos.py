"""Forgetting an identity known only from photos: textual inversion, the names the model
reads as the same subject, then re-steering of them all.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmn_desktop.errors import FmnError
from fmn_desktop.resteer import ForgetConfig
from fmn_desktop.services.defaults import preservation_prompts
from fmn_desktop.services.forget import ForgetOutcome, forget_to_file
from fmn_desktop.services.output import scratch_file
from fmn_desktop.services.progress import Phase


@dataclass
class PhotoProgress:
    """Progress of `forget_from_photos`: `stage` is "inversion", "names" or "forget"."""

    stage: str
    step: int = 0
    total: int = 0
    loss: float = math.nan
    message: str = ""


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
    images: str | os.PathLike,
    out: str | os.PathLike,
    placeholder: str = "<subject>",
    inversion=None,
    tokens: str | os.PathLike | None = None,
    embedding_out: str | os.PathLike | None = None,
    names: Sequence[str] = (),
    discover: bool = True,
    search_vocabulary: bool = False,
    threshold: float = 0.5,
    config: ForgetConfig | None = None,
    fmt: str = "lora",
    export_rank: int | None = None,
    steps_per_concept: bool = True,
    progress: Callable[[PhotoProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PhotoForgetOutcome:
    """Forget an identity known from a folder of photos (Forget-Me-Not's identity workflow).

    1. Textual inversion: learn `placeholder`'s vectors from the photos (`inversion`, an
       `InversionConfig`; its placeholder is replaced), or read them from `tokens`.
    2. Names (if `discover`): the preservation prompts the model reads as the photos' subject
       are dropped from the preservation set, and the names in them (plus `names`, and the
       vocabulary's best if `search_vocabulary`) that draw the subject are forgotten too; see
       `fmn_desktop.inversion.names`. Without this, a preservation prompt that names the
       identity holds it in place and the learned tokens are not forgotten either.
    3. Re-steering with the learned tokens installed: prompts of the placeholder and of every
       accepted or given name, the photos as reference images. The UNet patch goes to `out`,
       the learned tokens to `embedding_out` (default: beside it, `<stem>.tokens.safetensors`).

    `config` supplies every other forget setting (its concepts, references and preservation
    prompts are replaced); with `steps_per_concept` its steps are per re-steered concept (the
    concepts share each batch: measured in docs/research/IDENTITY_FROM_PHOTOS.md). Nothing is written
    if a stage fails or is cancelled.
    """
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
    from fmn_desktop.resteer.forget import load_reference_dir

    started = time.perf_counter()
    out = Path(out)
    embedding_out = (
        Path(embedding_out) if embedding_out else out.with_name(f"{out.stem}.tokens.safetensors")
    )
    if embedding_out.resolve() == out.resolve():
        raise FmnError("the patch and the learned tokens need two different files")
    load_reference_dir(images)  # a clear error before any work
    say = progress or (lambda _p: None)

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
            progress=lambda p: say(PhotoProgress("inversion", p.step, p.total, p.loss)),
            should_cancel=should_cancel,
        )
        learned = inv_result.learned
    learned.meta.setdefault("base_fingerprint", model.fingerprint or "")
    check_cancel()

    base = config or ForgetConfig(concepts=[learned.placeholder], kind="identity")
    preservation = preservation_prompts(model, base.retain_prompts)
    discovery = None
    found: list[str] = []
    if discover:
        discovery = discover_names(
            model.pipe,
            learned,
            images,
            candidates=list(names),
            preservation_prompts=preservation,
            search=search_vocabulary,
            threshold=threshold,
            seed=base.seed,
            progress=lambda text: say(PhotoProgress("names", message=text)),
        )
        found = discovery.accepted
        preservation = discovery.kept_prompts
    check_cancel()
    concepts = [learned.placeholder]
    for name in [*names, *found]:
        if name.lower() not in {c.lower() for c in concepts}:
            concepts.append(name)
    fields = {**base.__dict__, "concepts": concepts, "reference_dir": str(images)}
    fields["retain_prompts"] = preservation
    if steps_per_concept:
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
            fmt=fmt,
            export_rank=export_rank,
            progress=lambda p: say(PhotoProgress("forget", p.step, p.total, p.loss)),
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
class PhotosRequest:
    """`fmn forget-photos`: learn a token from a folder of photos, find the names the model
    uses for the same subject, forget them all; the patch is registered."""

    images: str
    token: str
    inversion: Any  # inversion.InversionConfig (its placeholder is replaced by `token`)
    config: Any  # ForgetConfig: every other forget setting
    names: list[str] = field(default_factory=list)
    discover: bool = True
    fmt: str = "lora"
    registry_root: str | None = None  # None: keep the files only
    out: str | None = None  # None: a temporary patch (registered, then removed)
    tokens_dir: str | None = None  # where the learned tokens go when `out` is None
    tags: list[str] = field(default_factory=list)


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
    """`forget_from_photos` (reporting each PhotoProgress), then register the patch."""
    from fmn_desktop.services.library import register_file

    tmp = None
    out = req.out
    embedding_out = None
    if out is None:
        # beside the registry it goes into; swept at the next open if the process is killed
        tmp = contextlib.ExitStack()
        out = str(
            tmp.enter_context(scratch_file(req.registry_root or tempfile.gettempdir(), "photos"))
        )
        folder = req.tokens_dir or str(Path.cwd())
        Path(folder).mkdir(parents=True, exist_ok=True)
        embedding_out = tokens_file_for(folder, req.token)
    try:
        yield Phase("inversion", f"learning {req.token} from the photos", 0, req.inversion.steps)
        outcome = forget_from_photos(
            model,
            req.images,
            out,
            placeholder=req.token,
            inversion=req.inversion,
            embedding_out=embedding_out,
            names=list(req.names),
            discover=req.discover,
            config=req.config,
            fmt=req.fmt,
            progress=ctx.progress,
            should_cancel=ctx.should_cancel,
        )
        record = None
        if req.registry_root is not None:
            yield Phase("register", "adding the patch to the registry")
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

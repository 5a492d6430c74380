"""The product's verbs as plain functions: the CLI and the desktop app both call these.

Each long one takes an optional progress callback and leaves nothing half-written: patch
files and exported models are written atomically, and a failed or cancelled job writes none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from fmn_desktop.errors import FmnError, PatchFormatError
from fmn_desktop.patch import Patch, PatchedUNet, load_patch, save_patch, to_lora, unet_module_names
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.training import Progress

DEFAULT_MODEL = "default"


def open_model(
    spec: str | None = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    family: str | None = None,
    prediction_type: str | None = None,
    config: str | None = None,
):
    """Load a model by path, or the embedded default model for None / "default".

    `config` is a diffusers config folder for a single file of non-standard architecture.
    """
    from fmn_desktop.models import load_pipeline

    if spec in (None, "", DEFAULT_MODEL):
        from fmn_desktop.toyworld import WEIGHTS_DIR, weights_available

        if not weights_available():
            raise FmnError(
                "the embedded default model's weights are not installed; give a model path "
                "(a diffusers folder or a .safetensors checkpoint)"
            )
        model = load_pipeline(WEIGHTS_DIR, family="sd1", dtype=dtype, device=device)
        model.family = "toy"
        return model
    return load_pipeline(
        spec,
        family=family,
        prediction_type=prediction_type,
        dtype=dtype,
        device=device,
        config=config,
    )


@dataclass
class PatchSpec:
    path: Path
    strength: float = 1.0


def parse_patch_spec(text: str) -> PatchSpec:
    """'PATH[:STRENGTH]' (a Windows drive letter's colon is not a strength)."""
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("\\", "/")):
        try:
            return PatchSpec(Path(head), float(tail))
        except ValueError:
            pass
    return PatchSpec(Path(text), 1.0)


def read_patches(model, specs: Sequence[PatchSpec]) -> list[tuple[Patch, float]]:
    names = unet_module_names(model.pipe.unet)
    return [(load_patch(s.path, names), s.strength) for s in specs]


@dataclass
class ForgetOutcome:
    path: Path
    patch: Patch
    seconds: float
    lora_error: float | None
    final_loss: float


def forget_to_file(
    model,
    config: ForgetConfig,
    out: str | os.PathLike,
    fmt: str = "lora",
    export_rank: int | None = None,
    max_rel_error: float = 0.01,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    extra: dict[str, str] | None = None,
    harden=None,
) -> ForgetOutcome:
    """Run a forget job on `model` and write the patch to `out` (LoRA or .diff).

    `harden` (attack.harden.HardenSettings) makes it an adversarially hardened job: forget,
    attack the patch, forget the prompts found too, for its rounds.

    Dense deltas written as LoRA go through truncated SVD: rank `export_rank`, or the smallest
    rank within `max_rel_error`; the error achieved is returned and stored in the metadata.
    `extra` adds string entries to the patch's metadata.
    """
    out = Path(out)
    if fmt not in ("lora", "diff"):
        raise FmnError(f"unknown patch format {fmt!r}; valid: lora, diff")
    if out.exists() and out.is_dir():
        raise FmnError(f"{out} is a folder; give a file name ending in .safetensors")
    if harden is not None:
        from fmn_desktop.attack.harden import harden as run_harden

        result = run_harden(
            model.pipe, config, harden, model.fingerprint or "", model.family, progress,
            should_cancel,
        ).result
    else:
        result = forget(
            model.pipe,
            config,
            fingerprint=model.fingerprint or "",
            family=model.family,
            progress=progress,
            should_cancel=should_cancel,
        )
    patch, err = result.patch, None
    if fmt == "lora" and not patch.is_lora:
        patch, err = to_lora(
            patch, rank=export_rank, max_rel_error=None if export_rank else max_rel_error
        )
        patch.meta.extra["lora_relative_error"] = f"{err:.6f}"
    patch.meta.hyperparameters["seconds"] = round(result.seconds, 3)
    patch.meta.extra.update(extra or {})
    save_patch(patch, out, fmt)
    return ForgetOutcome(out, patch, result.seconds, err, result.history[-1].loss)


@dataclass
class PhotoForgetOutcome:
    patch_path: Path
    embedding_path: Path
    concepts: list[str]  # what was re-steered: the learned placeholder, then names
    inversion: object  # fmn_desktop.inversion.InversionResult (None when tokens were given)
    discovery: object  # fmn_desktop.inversion.names.Discovery, or None
    forget: ForgetOutcome
    seconds: float


def with_model_defaults(model, config: ForgetConfig) -> ForgetConfig:
    """On the embedded model, what the user left unset takes the toy world's measured
    defaults (`demo.toy_defaults`), as `fmn demo` and ConceptBench use them; the built-in
    real-world preservation prompts mean nothing to its encoder. Other models are left alone."""
    if getattr(model, "family", None) != "toy":
        return config
    from fmn_desktop.demo import toy_defaults

    return toy_defaults(config)


def photo_preservation_prompts(model) -> list[str]:
    """The prompts a photo job holds in place before screening: the embedded model's own
    world (every concept's prompts), or the built-in real-world set."""
    from fmn_desktop.resteer.forget import DEFAULT_RETAIN_PROMPTS

    if getattr(model, "family", None) == "toy":
        from fmn_desktop.demo import toy_retain_prompts

        return toy_retain_prompts([])
    return list(DEFAULT_RETAIN_PROMPTS)


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
    progress: Callable[[Progress], None] | None = None,
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
    concepts share each batch: measured in docs/IDENTITY_FROM_PHOTOS.md). `progress` gets each
    stage's Progress with the stage as its phase ("inversion", "names" with a text, "forget").
    Nothing is written if a stage fails or is cancelled.
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

    base = config or ForgetConfig(concepts=[learned.placeholder], kind="identity")
    preservation = list(base.retain_prompts or photo_preservation_prompts(model))
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
            progress=lambda p: report(replace(p, phase="forget")),
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


def apply_to_file(
    model, specs: Sequence[PatchSpec], out: str | os.PathLike, force: bool = False
) -> Path:
    """Write `model` with patches applied as a diffusers folder, or a single `.safetensors`."""
    out = Path(out)
    patches = read_patches(model, specs)
    with PatchedUNet(model.pipe.unet, patches, fingerprint=model.fingerprint, force=force):
        if out.suffix.lower() == ".safetensors":
            from fmn_desktop.models import export_single_file

            family = None if model.family == "toy" else model.family
            export_single_file(model.pipe, out, family=family)
        else:
            _save_folder_atomically(model.pipe, out)
    return out


def _save_folder_atomically(pipe, out: Path) -> None:
    """save_pretrained into a temporary sibling, then rename: no half-written model folder."""
    import shutil
    import tempfile

    if out.exists() and any(out.iterdir()):
        raise FmnError(f"{out} exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.no_grad()
def generate_images(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 20,
    guidance: float = 5.0,
    size: int | None = None,
) -> list[list[Image.Image]]:
    """Images[prompt][seed], each from its own seeded generator (repeatable)."""
    rows = []
    for prompt in prompts:
        row = []
        for seed in seeds:
            g = torch.Generator("cpu").manual_seed(int(seed))
            kwargs = {"height": size, "width": size} if size else {}
            row.append(
                pipe(
                    prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=g,
                    **kwargs,
                ).images[0]
            )
        rows.append(row)
    return rows


def grid_image(
    rows: list[list[Image.Image]],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    cell: int | None = None,
) -> Image.Image:
    """A labelled grid: one row per prompt (label on the left), one column per seed."""
    n_cols = max(len(r) for r in rows)
    size = cell or max(64, rows[0][0].width)
    label_w = 0 if not labels else min(320, 7 * max(len(s) for s in labels) + 12)
    top = 18 if title else 0
    grid = Image.new("RGB", (label_w + n_cols * (size + 2), top + len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill="black")
    for r, row in enumerate(rows):
        y = top + r * (size + 2)
        if labels:
            draw.text((4, y + size // 2 - 6), labels[r][:45], fill="black")
        for c, img in enumerate(row):
            grid.paste(img.resize((size, size), Image.NEAREST), (label_w + c * (size + 2), y))
    return grid


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 12) -> Image.Image:
    out = Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), "white"
    )
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    import io

    from fmn_desktop.fileio import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def describe_patch(path: str | os.PathLike) -> dict:
    """Metadata and a summary of a patch file, without needing a model."""
    patch = load_patch(path)
    meta = patch.meta
    ranks = sorted({d.rank for d in patch.deltas.values() if d.rank is not None})
    size = Path(path).stat().st_size
    if not patch.deltas:
        raise PatchFormatError(f"{path} holds no deltas")
    return {
        "file": str(path),
        "bytes": size,
        "format": "lora" if patch.is_lora else "diff",
        "concepts": meta.concepts,
        "kind": meta.kind,
        "method": meta.method,
        "family": meta.family,
        "base_fingerprint": meta.base_fingerprint,
        "created": meta.created,
        "title": meta.title,
        "tensors": len(patch.deltas),
        "parameters": patch.numel(),
        "ranks": ranks,
        "hyperparameters": meta.hyperparameters,
        "scores": meta.scores,
        "extra": meta.extra,
        "norm": math.sqrt(sum(float(d.to_dense().square().sum()) for d in patch.deltas.values())),
    }

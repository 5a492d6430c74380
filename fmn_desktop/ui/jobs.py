"""The app's background jobs: the CLI's workflow functions, composed; no Qt, no new logic.

Each job is a generator (progress as `Progress` values between the steps of the work) or calls
a workflow with `progress`/`should_cancel` callbacks, so `workers.Job` can run it off the UI
thread and cancel it between steps. Every function here is usable headless.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmn_desktop.training import Progress

DTYPES = ("fp32", "fp16", "bf16")


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def load_model(spec: str, device: str = "cpu", precision: str = "fp32"):
    """`open_model` as the CLI calls it, with the same CPU/precision rule."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.workflows import open_model

    if device == "cpu" and precision != "fp32":
        raise FmnError("fp16/bf16 are for CUDA; choose fp32 precision on the CPU")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise FmnError("no CUDA device is available here; choose the CPU in Settings")
    return open_model(spec, device=device, dtype=torch_dtype(precision))


def toy_concept(model, concepts: Sequence[str]):
    """The embedded model's concept for a forget job, when the judge can score it."""
    if getattr(model, "family", None) != "toy" or len(concepts) != 1:
        return None
    from fmn_desktop.toyworld import CONCEPTS

    return CONCEPTS.get(concepts[0])


def evaluate_patch(model, patch, concept, seeds: int = 2, steps: int = 20, should_cancel=None,
                   other_seeds: int = 1, others_limit: int | None = None):
    """`evaluate.patch_scores.evaluate_patches` for one patch at strength 1."""
    from fmn_desktop.evaluate.patch_scores import evaluate_patches

    return evaluate_patches(model, [(patch, 1.0)], concept, seeds, steps, should_cancel,
                            other_seeds, others_limit)


def register_file(registry_root: str, model, path, tags=(), source: str = "desktop app"):
    """Add the patch file at `path` (and the model it was made on) to the registry."""
    from fmn_desktop.registry import open_registry

    with open_registry(registry_root) as reg:
        if model.fingerprint:
            reg.add_base_model(
                model.fingerprint,
                name=Path(str(model.source)).name,
                path=str(model.source),
                family=model.family,
            )
        return reg.add_patch(Path(path), tags=list(tags), source=source)


@dataclass
class ForgetRequest:
    config: Any  # ForgetConfig
    evaluate: bool = True
    eval_seeds: int = 2
    eval_steps: int = 20
    eval_others: int | None = None  # retention over the first N other concepts (None: all)
    registry_root: str | None = None  # None: keep the file only
    out: str | None = None  # None: a temporary file (registered, then removed)
    tags: list[str] = field(default_factory=list)
    fmt: str = "lora"
    harden: int = 0  # adversarial hardening rounds (attack.harden; `fmn forget --harden`)


@dataclass
class ForgetDone:
    path: Path | None  # the patch file kept outside the registry, if any
    record: Any  # PatchRecord when registered
    seconds: float
    final_loss: float
    scores: dict


def forget_job(ctx, model, req: ForgetRequest):
    """Forget (`forget_to_file`, reporting each Progress), evaluate, register."""
    from fmn_desktop.patch import save_patch
    from fmn_desktop.workflows import forget_to_file

    tmp = None
    out = req.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="fmn-forget-")
        out = str(Path(tmp.name) / "patch.safetensors")
    try:
        harden = None
        if req.harden:
            from fmn_desktop.attack.harden import HardenSettings

            harden = HardenSettings(rounds=req.harden, seed=req.config.seed)
        total = req.config.steps * (1 + req.harden)
        yield Progress("train", 0, total, text="re-steering attention")
        outcome = forget_to_file(
            model,
            req.config,
            out,
            fmt=req.fmt,
            progress=ctx.progress,
            should_cancel=ctx.should_cancel,
            harden=harden,
        )
        scores: dict = {}
        concept = toy_concept(model, req.config.concepts) if req.evaluate else None
        if concept is not None:
            yield Progress("evaluate", text=f"measuring M-Score and retention ({concept.name})")
            scores = evaluate_patch(
                model,
                outcome.patch,
                concept,
                req.eval_seeds,
                req.eval_steps,
                ctx.should_cancel,
                others_limit=req.eval_others,
            )
            outcome.patch.meta.scores = scores
            save_patch(outcome.patch, out)
        record = None
        if req.registry_root is not None:
            yield Progress("register", text="adding the patch to the registry")
            record = register_file(req.registry_root, model, out, req.tags)
            from fmn_desktop.evaluate.patch_scores import registry_rows
            from fmn_desktop.registry import open_registry

            if scores:
                settings = {"seeds": req.eval_seeds, "steps": req.eval_steps}
                with open_registry(req.registry_root) as reg:
                    reg.add_evaluations(
                        registry_rows(scores, concept.name, settings), patch=record.id
                    )
        return ForgetDone(
            None if tmp else Path(out), record, outcome.seconds, outcome.final_loss, scores
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


@dataclass(frozen=True)
class PatchItem:
    """A patch as the app lists it: its file, strength, and the registry's view of it."""

    name: str
    path: str
    strength: float = 1.0
    concepts: tuple[str, ...] = ()
    kind: str = ""
    family: str = ""
    base_fingerprint: str = ""

    @classmethod
    def from_record(cls, record, strength: float = 1.0) -> PatchItem:
        return cls(
            record.name,
            str(record.path),
            float(strength),
            tuple(record.concepts),
            record.kind,
            record.family,
            record.base_fingerprint,
        )


def stack_entries(items: Sequence[PatchItem], model=None, cache: dict | None = None):
    """`patch.stack.StackEntry`s read from the files (checked against the model's UNet when
    given); the registry's kind and concepts win over the file's, as in `fmn stack`.
    `cache` (path -> Patch) saves re-reading files while strengths change."""
    from fmn_desktop.patch import load_patch, unet_module_names
    from fmn_desktop.patch.stack import StackEntry

    names = unet_module_names(model.pipe.unet) if model is not None else None
    entries = []
    for it in items:
        if cache is not None and it.path in cache:
            patch = cache[it.path]
        else:
            patch = load_patch(it.path, names)
            if cache is not None:
                cache[it.path] = patch
        if it.kind:
            patch.meta.kind = it.kind
        if it.concepts:
            patch.meta.concepts = list(it.concepts)
        entries.append(StackEntry(patch, it.strength, it.name))
    return entries


def conflicts(
    items: Sequence[PatchItem], fingerprint: str | None, cache: dict | None = None
) -> list[str]:
    """`patch.stack.find_conflicts` messages for these patches (no model needed)."""
    from fmn_desktop.patch.stack import find_conflicts

    return [c.message for c in find_conflicts(stack_entries(items, None, cache), fingerprint)]


@dataclass
class CompareRequest:
    prompts: list[str]
    seeds: list[int]
    patches: list[PatchItem]
    mode: str = "additive"
    steps: int = 20
    guidance: float = 5.0
    force: bool = False
    title: str = "patched"
    labelled: bool = True  # prompt labels and titles on the grids (off for thumbnails)


@dataclass
class CompareDone:
    base: Any  # PIL image grid
    patched: Any
    labels: list[str]


def compare_job(ctx, model, req: CompareRequest):
    """Base grid and patched grid for the same prompts and seeds (`fmn generate --patch`);
    the patches are applied as a stack (additive or fused), conflicts refused unless forced."""
    import contextlib

    from fmn_desktop.errors import FmnError
    from fmn_desktop.patch.stack import ComposeSettings, applied_stack
    from fmn_desktop.workflows import generate_images, grid_image

    if not req.prompts or not req.seeds:
        raise FmnError("give at least one prompt and one seed")
    entries = stack_entries(req.patches, model) if req.patches else []
    total = 2 * len(req.prompts)
    yield Progress("generate", 0, total, text="base model")
    rows = []
    for i, prompt in enumerate(req.prompts):
        rows += generate_images(model.pipe, [prompt], req.seeds, req.steps, req.guidance)
        yield Progress("generate", i + 1, total, text="base model")
    cell = max(96, rows[0][0].width)
    labels = req.prompts if req.labelled else None
    base = grid_image(rows, labels, title="base model" if req.labelled else None, cell=cell)
    after_rows = []
    applied = (
        applied_stack(model, entries, ComposeSettings(mode=req.mode), force=req.force)
        if entries
        else contextlib.nullcontext()
    )
    with applied:
        for i, prompt in enumerate(req.prompts):
            after_rows += generate_images(model.pipe, [prompt], req.seeds, req.steps, req.guidance)
            yield Progress("generate", len(req.prompts) + i + 1, total, text=req.title)
    title = (req.title if entries else "no patch") if req.labelled else None
    patched = grid_image(after_rows, labels, title=title, cell=cell)
    return CompareDone(base, patched, list(req.prompts))


EXPORT_FORMATS = {
    "lora": "Stack as one LoRA patch (*.safetensors)",
    "diff": "Stack as one .diff patch (*.safetensors)",
    "single-file": "Patched checkpoint, single file (*.safetensors)",
    "diffusers": "Patched model, diffusers folder (*)",
}


def export_stack_job(
    ctx,
    model,
    items: Sequence[PatchItem],
    out: str,
    fmt: str,
    mode: str = "additive",
    registry_root: str | None = None,
    name: str = "",
    force: bool = False,
):
    """`patch.stack.export_stack` (what `fmn stack export` runs); a LoRA/.diff result is
    registered too when a registry is given."""
    from fmn_desktop.patch.stack import ComposeSettings, export_stack

    yield Progress("export", text=f"composing {len(items)} patches ({mode})")
    entries = stack_entries(items, model)
    yield Progress("export", text=f"writing {out}")
    result = export_stack(
        model,
        entries,
        out,
        fmt,
        ComposeSettings(mode=mode),
        force=force,
        title=f"stack {name}".strip(),
    )
    if registry_root is not None and fmt in ("lora", "diff"):
        from fmn_desktop.registry import open_registry

        with open_registry(registry_root) as reg:
            reg.add_patch(Path(out), tags=["stack"] + ([name] if name else []), source=str(out))
    return result


def import_job(ctx, registry_root: str, path: str, model=None):
    """`library.import_file` (what `fmn patches import` runs): our files as they are, other
    tools' files checked against the loaded model and converted."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.library import import_file
    from fmn_desktop.registry import open_registry

    yield Progress("import", text=f"reading {Path(path).name}")
    with open_registry(registry_root) as reg:
        try:
            return import_file(reg, path, model)
        except FmnError as exc:
            if model is None and "(--model)" in str(exc):  # the CLI's wording, said for the app
                raise FmnError(
                    str(exc).replace("(--model)", "(load it on the Model page first)")
                ) from exc
            raise


# ------------------------------------------------------------ correction and broad removal
@dataclass
class CorrectRequest:
    """A closed-form correction (`config` a CorrectConfig: `fmn correct`), a broad removal
    (a BroadConfig: `fmn erase-broad`) or a disentangling (a DisentangleConfig: `fmn
    disentangle`), written as `fmt` and registered."""

    config: Any
    fmt: str = "diff"
    registry_root: str | None = None  # None: keep the file only
    out: str | None = None  # None: a temporary file (registered, then removed)
    tags: list[str] = field(default_factory=list)
    preserve_prompts: list[str] | None = None


@dataclass
class CorrectDone:
    path: Path | None  # the patch file kept outside the registry, if any
    record: Any  # PatchRecord when registered
    seconds: float
    message: str  # the CLI's line: what was written, and the solve's figures
    report: dict  # closed form: the solve's figures; broad: {}
    losses: list[float] = field(default_factory=list)


def _correction_job(ctx, model, req: CorrectRequest, run, what: str):
    tmp = None
    out = req.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="fmn-correct-")
        out = str(Path(tmp.name) / "patch.safetensors")
    try:
        yield Progress("solve", 0, getattr(req.config, "steps", 0), text=what)
        outcome = run(out)
        record = None
        if req.registry_root is not None:
            yield Progress("register", text="adding the patch to the registry")
            record = register_file(req.registry_root, model, out, req.tags)
        result = outcome.result
        return CorrectDone(
            None if tmp else Path(out),
            record,
            result.seconds,
            outcome.message,
            dict(getattr(result, "report", {}) or {}),
            [h.loss for h in getattr(result, "history", []) if h.phase == "train"],
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


def correct_job(ctx, model, req: CorrectRequest):
    """`correct.workflow.correct_to_file` (what `fmn correct` runs), then register."""
    from fmn_desktop.correct.workflow import correct_to_file

    return _correction_job(
        ctx,
        model,
        req,
        lambda out: correct_to_file(model, req.config, out, req.fmt, req.preserve_prompts),
        f"solving the correction of {req.config.concept!r} towards {req.config.guide!r}",
    )


def _trained_correction_job(ctx, model, req: CorrectRequest, to_file, what: str):
    """A correction that trains (`to_file`: a `correct.workflow` function), reporting each
    step and honouring cancel, then register."""
    return _correction_job(
        ctx,
        model,
        req,
        lambda out: to_file(
            model,
            req.config,
            out,
            req.fmt,
            req.preserve_prompts,
            progress=ctx.progress,
            should_cancel=ctx.should_cancel,
        ),
        what,
    )


def broad_job(ctx, model, req: CorrectRequest):
    """`correct.workflow.erase_broad_to_file` (what `fmn erase-broad` runs)."""
    from fmn_desktop.correct.workflow import erase_broad_to_file

    what = f"removing {', '.join(req.config.words)}"
    return _trained_correction_job(ctx, model, req, erase_broad_to_file, what)


def disentangle_job(ctx, model, req: CorrectRequest):
    """`correct.workflow.disentangle_to_file` (what `fmn disentangle` runs)."""
    from fmn_desktop.correct.workflow import disentangle_to_file

    c = req.config
    what = f"letting {c.concept!r} come through without {c.dominant!r}"
    return _trained_correction_job(ctx, model, req, disentangle_to_file, what)


# ------------------------------------------------------------------------- measure
def judged_concept(model, name: str, what: str):
    """The toy-world concept `name` when `model` has a judge (the embedded model); else a
    clear error. `what` words it, e.g. "an attack check scores images"."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.toyworld import CONCEPTS

    if getattr(model, "family", None) != "toy":
        raise FmnError(
            f"{what} with the embedded model's judge: load the embedded model on the Model "
            "page (no judge exists for other models)"
        )
    if name not in CONCEPTS:
        raise FmnError(
            f"unknown concept {name!r}: the judge knows the toy world's concepts only "
            f"({', '.join(CONCEPTS)})"
        )
    return CONCEPTS[name]


def measure_job(ctx, model, registry_root: str, item: PatchItem, concept: str,
                seeds: int = 2, steps: int = 20):
    """Score a library patch on the embedded model and store the figures with it (what
    `fmn evaluate --record` runs); returns the scores dict."""
    from fmn_desktop.evaluate.patch_scores import evaluate_patches, registry_rows
    from fmn_desktop.registry import open_registry
    from fmn_desktop.workflows import PatchSpec, read_patches

    judged = judged_concept(model, concept, "M-Score and retention are scored")
    yield Progress("evaluate", text=f"measuring M-Score and retention ({concept})")
    patches = read_patches(model, [PatchSpec(Path(item.path), item.strength)])
    scores = evaluate_patches(model, patches, judged, seeds, steps, ctx.should_cancel)
    yield Progress("register", text="storing the scores with the patch")
    settings = {"seeds": seeds, "other_seeds": 1, "steps": steps, "strength": item.strength}
    with open_registry(registry_root) as reg:
        reg.add_evaluations(registry_rows(scores, concept, settings), patch=item.name)
    return scores


# ------------------------------------------------------------------------- attack check
@dataclass
class AttackRequest:
    """`fmn attack --record NAME`: attack one library patch's concept before and after it."""

    patch: PatchItem
    concept: str
    settings: Any  # attack.AttackSettings
    registry_root: str | None = None  # with record_id: store the figures with the patch
    record_id: int | None = None
    out_dir: str | None = None  # also write attack.json / attack.png there
    force: bool = False


@dataclass
class AttackDone:
    report: Any  # attack.AttackReport
    table: str  # attack.format_table
    grid: Any  # PIL image: attack.report_grid
    rows: list  # EvaluationRecord stored with the patch
    paths: dict = field(default_factory=dict)


def attack_targets(concept: str, settings) -> int:
    """How many targets one state of the attack has (prompts x seeds)."""
    from fmn_desktop.toyworld import CONCEPTS

    return len(CONCEPTS[concept].prompts()) * settings.seeds


def attack_job(ctx, model, req: AttackRequest):
    """`attack.run_attack` on the library patch (what `fmn attack` runs), then
    `record_in_registry`; progress is one Progress per target attacked."""
    from fmn_desktop.attack import format_table, record_in_registry, run_attack, write_report
    from fmn_desktop.attack.candidates import prompt_words
    from fmn_desktop.attack.run import report_grid
    from fmn_desktop.errors import CancelledError, FmnError
    from fmn_desktop.toyworld import CONCEPTS, load_judge
    from fmn_desktop.workflows import PatchSpec, read_patches

    concept = judged_concept(model, req.concept, "an attack check scores images")
    s = req.settings
    if s.budget < 1 or s.seeds < 1 or s.chance < 0:
        raise FmnError("budget and seeds must be at least 1, chance at least 0")
    if not 0.0 < s.threshold < 1.0:
        raise FmnError("the threshold must be between 0 and 1")
    total = 2 * attack_targets(req.concept, s)
    yield Progress("attack", 0, total, text="loading the judge and the patch")
    judge = load_judge(None)
    patches = read_patches(model, [PatchSpec(Path(req.patch.path), req.patch.strength)])
    words = prompt_words(p for c in CONCEPTS.values() for p in c.prompts())
    done = [0]

    def log(line: str) -> None:
        done[0] += 1
        ctx.progress(Progress("attack", done[0], total, text=line))
        if ctx.should_cancel():
            raise CancelledError("attack check cancelled; nothing was recorded")

    yield Progress("attack", 0, total, text=f"attacking {req.concept} before the patch")
    report = run_attack(
        model.pipe,
        judge,
        concept,
        patches,
        s,
        fingerprint=model.fingerprint,
        force=req.force,
        extra_words=words,
        model_name=str(model.source),
        patch_info=[{"file": req.patch.path, "strength": req.patch.strength,
                     "name": req.patch.name}],
        log=log,
    )
    yield Progress("report", total, total, text="drawing the best prompts found")
    grid = report_grid(report)
    paths = write_report(report, req.out_dir) if req.out_dir else {}
    rows = []
    if req.registry_root is not None and req.record_id is not None:
        from fmn_desktop.registry import open_registry

        yield Progress("register", total, total, text="recording the figures with the patch")
        with open_registry(req.registry_root) as reg:
            rows = record_in_registry(reg, req.record_id, report, strength=req.patch.strength)
    return AttackDone(report, format_table(report), grid, rows, paths)


# ------------------------------------------------------------------- forget from photos
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
    """`workflows.forget_from_photos` (what `fmn forget-photos` runs, reporting each
    Progress), then register the patch."""
    from fmn_desktop.workflows import forget_from_photos

    tmp = None
    out = req.out
    embedding_out = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="fmn-photos-")
        out = str(Path(tmp.name) / "patch.safetensors")
        folder = req.tokens_dir or str(Path.cwd())
        Path(folder).mkdir(parents=True, exist_ok=True)
        embedding_out = tokens_file_for(folder, req.token)
    try:
        yield Progress(
            "inversion", 0, req.inversion.steps, text=f"learning {req.token} from the photos"
        )
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
            tmp.cleanup()

"""`fmn`: forget and correct concepts in Stable Diffusion checkpoints, headless.

Exit status: 0 on success, 2 on a usage error, 1 on any other error (user errors print one
line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fmn_desktop import __version__
from fmn_desktop.correct.commands import CORRECT_COMMANDS, add_correct_commands
from fmn_desktop.errors import FmnError
from fmn_desktop.evaluate.commands import EVALUATE_COMMANDS, add_evaluate_command
from fmn_desktop.registry_cli import REGISTRY_COMMANDS, add_registry_commands
from fmn_desktop.runtime import configure_runtime

MODEL_HELP = (
    "a diffusers folder or an LDM/A1111 single-file .safetensors (SD1.x, SD2.x, SDXL); "
    "'default' (the default) is the embedded toy model"
)


class UsageError(FmnError):
    """Bad combination of arguments: exit status 2."""


def _model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model", nargs="?", default="default", help=MODEL_HELP)
    p.add_argument(
        "--family",
        choices=["sd1", "sd2", "sdxl"],
        help="model family, when detection from the file is not enough",
    )
    p.add_argument(
        "--prediction-type",
        choices=["epsilon", "v_prediction"],
        help="override the scheduler's prediction type (SD2 768 models use v)",
    )
    p.add_argument(
        "--config",
        metavar="DIR",
        help="diffusers config folder for a single file whose architecture is not "
        "its family's standard one (default: the shipped family config)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="weights dtype (default: fp32 on CPU, fp16 on CUDA)",
    )


def fc(name: str):
    """A ForgetConfig field's default: the CLI shows and uses the library's own defaults."""
    from fmn_desktop.resteer import ForgetConfig

    return ForgetConfig.__dataclass_fields__[name].default


def _inversion_args(p: argparse.ArgumentParser, steps_flag: str, lr_flag: str) -> None:
    from fmn_desktop.inversion import InversionConfig

    d = InversionConfig.__dataclass_fields__
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images of it")
    p.add_argument(
        "--token",
        default="<subject>",
        help="the new token, one word, e.g. '<zorbu>' (default: %(default)s)",
    )
    p.add_argument(
        "--vectors",
        type=int,
        default=d["num_vectors"].default,
        help="embedding vectors of the token (default: %(default)s)",
    )
    p.add_argument(
        steps_flag,
        dest="inversion_steps",
        type=int,
        default=d["steps"].default,
        help="inversion steps (default: %(default)s)",
    )
    p.add_argument(
        lr_flag,
        dest="inversion_lr",
        type=float,
        default=d["lr"].default,
        help="inversion learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--inversion-batch",
        type=int,
        default=d["batch_size"].default,
        help="images per inversion step (default: %(default)s)",
    )
    p.add_argument(
        "--init-word",
        default=None,
        help="start the vectors at this word's embedding (default: random)",
    )


def _inversion_config(args):
    from fmn_desktop.inversion import InversionConfig

    return InversionConfig(
        placeholder=args.token,
        num_vectors=args.vectors,
        steps=args.inversion_steps,
        lr=args.inversion_lr,
        batch_size=args.inversion_batch,
        init_word=args.init_word,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    from fmn_desktop.attack.harden import HardenSettings
    from fmn_desktop.resteer import POSITION_MODES
    from fmn_desktop.resteer.templates import KINDS

    parser = argparse.ArgumentParser(
        prog="fmn",
        description=__doc__.splitlines()[0],
        epilog="Run `fmn demo` for a two-minute tour on the embedded model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: FMN_THREADS or min(4, cores))",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "forget",
        help="forget a concept: write a patch file",
        description="Re-steer the cross-attention of a concept's tokens towards zero and write "
        "the change as a small patch (kohya LoRA or .diff safetensors).",
        epilog="example: fmn forget ./sd15 --concept 'Van Gogh' --kind style --out vangogh.safetensors",
    )
    _model_args(p)
    p.add_argument(
        "--concept",
        action="append",
        required=True,
        help="concept text as it appears in prompts (repeat for several at once)",
    )
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="object",
        help="picks the prompt templates (default: object)",
    )
    p.add_argument(
        "--template",
        action="append",
        help="prompt template with {} for the concept (repeatable; replaces the kind's)",
    )
    p.add_argument(
        "--references",
        metavar="DIR",
        help="folder of reference images; default: generated by the model itself",
    )
    p.add_argument(
        "--num-references",
        type=int,
        default=fc("num_references"),
        help="images to generate when no folder is given (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimisation steps (fast mode: per layer) (default: 70 faithful, 35 fast)",
    )
    p.add_argument(
        "--mode",
        choices=["faithful", "fast"],
        default=fc("mode"),
        help="faithful: through the whole UNet, as the paper; fast: each layer's K on cached "
        "queries, no UNet backward (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 1e-2 K/V, 3e-2 LoRA, 2e-6 whole UNet)",
    )
    p.add_argument(
        "--trainable",
        choices=["kv", "attn2", "unet"],
        default=fc("trainable"),
        help="what changes: attn2 K/V, all of attn2, or the whole UNet (default: %(default)s)",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        help="train a LoRA of this rank instead of dense deltas",
    )
    p.add_argument(
        "--positions",
        choices=POSITION_MODES,
        default=fc("positions"),
        help="token positions re-steered; 'following' is every position after the concept, "
        "which a causal text encoder fills with it (default: %(default)s)",
    )
    p.add_argument(
        "--term",
        choices=["squares", "mass", "logmass"],
        default=fc("term"),
        help="re-steering term: the paper's sum of squared probabilities on the marked "
        "columns, or per pixel the marked mass squared / -log(1 - mass) (default: %(default)s)",
    )
    p.add_argument(
        "--preserve",
        choices=["output", "maps"],
        default=fc("preserve"),
        help="what the preservation term holds for other prompts (default: %(default)s)",
    )
    p.add_argument(
        "--retain-weight",
        type=float,
        default=None,
        help="weight of the preservation term; 0 turns it off (default: 6 faithful, 3 fast)",
    )
    p.add_argument(
        "--anchor",
        default=fc("anchor"),
        metavar="TEXT",
        help="what the concept's outputs are pulled towards: each forget prompt with the "
        "concept replaced by TEXT, e.g. 'a person' (default: the concept removed)",
    )
    p.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="weight of the anchor term; 0 gives the paper's re-steering alone "
        "(default: 3 faithful, 0 fast)",
    )
    p.add_argument(
        "--anchor-guidance",
        type=float,
        default=fc("anchor_guidance"),
        help="how far past the anchor, away from the concept, the target lies; negative: "
        "past the concept, away from the anchor (default: %(default)s)",
    )
    p.add_argument(
        "--resteer-weight",
        type=float,
        default=fc("resteer_weight"),
        help="weight of the paper's re-steering term; 0 trains the anchor term alone, e.g. to "
        "push 'knight' away from 'Gorvak' (default: %(default)s)",
    )
    p.add_argument(
        "--retain-prompt",
        action="append",
        help="prompt to hold in place (repeatable; default: a built-in set)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=fc("batch_size"),
        help="samples per step (default: %(default)s)",
    )
    p.add_argument(
        "--harden",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="adversarial hardening: after forgetting, attack the patch (white-box K/V token "
        "search, no judge needed), forget the word sequences found too, ROUNDS times; each "
        "round costs one more forget job (default: 0, off; docs/ATTACK.md)",
    )
    p.add_argument(
        "--harden-spellings",
        type=int,
        default=HardenSettings.spellings,
        metavar="N",
        help="with --harden: also forget, each round, the N spelling variants of the name "
        "('Z-orbu', 'Zorbuu', ...) that the patch holds least (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format",
        choices=["lora", "diff"],
        default="lora",
        help="patch file layout (default: lora)",
    )
    p.add_argument(
        "--export-rank",
        type=int,
        default=None,
        help="LoRA rank when writing dense deltas (default: smallest within 1%% error)",
    )
    p.add_argument("--out", required=True, help="patch file to write (.safetensors)")

    p = sub.add_parser(
        "invert",
        help="learn tokens for a subject from a folder of images (textual inversion)",
        description="Learn new token vectors that make the model draw the subject of a "
        "folder of images (only the new embedding rows change), and write them as a "
        "safetensors embedding that diffusers' load_textual_inversion and A1111 read.",
        epilog="example: fmn invert --images photos/ --token '<zorbu>' --out zorbu.safetensors",
    )
    _model_args(p)
    _inversion_args(p, steps_flag="--steps", lr_flag="--lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="embedding file to write (.safetensors)")

    p = sub.add_parser(
        "forget-photos",
        help="forget an identity known from photos: learn tokens, find its names, forget",
        description="Textual inversion on the photos, then the names and preservation "
        "prompts the model reads as the same subject (scored on the photos by the model "
        "itself), then re-steering of the learned tokens and of those names with the photos "
        "as reference images. Writes the patch and the learned tokens.",
        epilog="example: fmn forget-photos --images photos/ --token '<zorbu>' "
        "--out forget-zorbu.safetensors",
    )
    _model_args(p)
    _inversion_args(p, steps_flag="--inversion-steps", lr_flag="--inversion-lr")
    p.add_argument(
        "--tokens",
        metavar="EMB",
        help="use tokens learned before (an embedding file) instead of learning them",
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        help="a name of the subject to forget as well (repeatable)",
    )
    p.add_argument(
        "--no-discover",
        action="store_true",
        help="skip finding the names and preservation prompts that draw the subject",
    )
    p.add_argument(
        "--search-vocabulary",
        action="store_true",
        help="also search the tokenizer's vocabulary for names (slow; finds odd strings)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="share of the learned tokens' effect on the photos at which a prompt counts as "
        "the subject (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=fc("steps"),
        help="re-steering steps per re-steered concept (the learned token, each name) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="re-steering learning rate (default: as forget)"
    )
    p.add_argument(
        "--trainable",
        choices=["kv", "attn2", "unet"],
        default=fc("trainable"),
        help="what changes (default: %(default)s)",
    )
    p.add_argument(
        "--retain-weight",
        type=float,
        default=None,
        help="weight of the preservation term (default: 6)",
    )
    p.add_argument(
        "--retain-prompt",
        action="append",
        help="prompt to hold in place (repeatable; default: the model's world for the "
        "embedded model, else a built-in set); screened like the default",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format", choices=["lora", "diff"], default="lora", help="patch layout (default: lora)"
    )
    p.add_argument("--out", required=True, help="patch file to write (.safetensors)")
    p.add_argument(
        "--embedding-out",
        default=None,
        help="where the learned tokens go (default: OUT's stem + .tokens.safetensors)",
    )

    p = sub.add_parser(
        "apply",
        help="write a patched model (diffusers folder or single file)",
        description="Apply patches (PATH[:STRENGTH]) to a model and write the "
        "result: a folder, or one .safetensors file in the LDM layout.",
    )
    _model_args(p, positional=False)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("patches", nargs="+", metavar="PATCH[:STRENGTH]")
    p.add_argument(
        "--out",
        required=True,
        help="a new folder (diffusers layout) or a file ending in .safetensors",
    )
    p.add_argument(
        "--force", action="store_true", help="apply even if a patch was made for another base model"
    )

    p = sub.add_parser(
        "generate",
        help="generate a grid of images, optionally before/after patches",
        description="Generate one row per prompt and one column per seed; with "
        "--patch, the grid shows the base model (left) and the patched one (right).",
    )
    _model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="patch to apply (repeatable; strength default 1.0)",
    )
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale (default: 5)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels")
    p.add_argument("--force", action="store_true", help="apply patches made for another base")
    p.add_argument("--out", required=True, help="PNG file to write")

    p = sub.add_parser(
        "inspect",
        help="show a patch file's metadata",
        description="Print what a patch is: concepts, method, base model, "
        "hyper-parameters, scores, size.",
    )
    p.add_argument("patch", help="patch file (.safetensors)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "demo",
        help="the two-minute tour on the embedded model",
        description="Load the embedded model, show a before grid, forget one "
        "concept, show the after grid, and print M-Score and retention.",
    )
    p.add_argument("--concept", default=None, help="concept to forget (default: the demo's)")
    p.add_argument("--out-dir", default="fmn-demo", help="where grids and the patch go")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps")

    p = sub.add_parser(
        "bench",
        help="ConceptBench on the embedded model: forget each concept, score",
        description="Forget each identity, object and style of the embedded model "
        "and the unsafe stand-in, one at a time, and write M-Score before/after, "
        "retention and forget time as bench.md, bench.json and bench.png.",
    )
    p.add_argument("--out-dir", default="fmn-bench", help="where the report goes")
    p.add_argument("--seeds", type=int, default=8, help="seeds per evaluation prompt (default: 8)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per forget")
    p.add_argument("--only", action="append", help="run only these items (repeatable)")
    p.add_argument(
        "--mode",
        choices=("faithful", "fast"),
        default=fc("mode"),
        help="forget mode of every item (default: %(default)s)",
    )
    p.add_argument(
        "--sampler-steps",
        type=int,
        default=20,
        help="sampling steps of the evaluation images (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default="default",
        help="a toy-world pipeline folder (e.g. a training checkpoint); default: embedded",
    )
    p.add_argument("--judge", default=None, help="judge weights for --model (default: shipped)")

    p = sub.add_parser(
        "attack",
        help="search for prompts that bring a forgotten concept back: attack success rate",
        description="Search, per evaluation prompt and seed, for a prompt whose image the "
        "judge reads as the concept (misspellings, embedding neighbours, white-box K/V "
        "matching, word edits), before and after the patches; print the no-attack rate and "
        "the attack success rate (ASR) with 95% Wilson intervals, write attack.json and "
        "attack.png. Scoring needs the toy world's judge (see docs/ATTACK.md).",
        epilog="example: fmn attack --patch forget-Zorbu.safetensors --concept Zorbu "
        "--budget 64 --seeds 2",
    )
    _model_args(p)
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="patch to attack (repeatable; strength default 1.0); with --record and no "
        "--patch, the registry patch itself",
    )
    p.add_argument("--concept", required=True, help="a concept of the toy world, e.g. Zorbu")
    p.add_argument(
        "--budget", type=int, default=64, help="scored images per target (default: %(default)s)"
    )
    p.add_argument(
        "--seeds", type=int, default=2, help="seeds per evaluation prompt (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=1000, help="first seed (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale (default: %(default)s)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="judge presence counted as the concept (default: %(default)s)",
    )
    p.add_argument(
        "--chance",
        type=int,
        default=16,
        help="random-filler prompts per target after the patches, for the chance baseline; "
        "0 skips it (default: %(default)s)",
    )
    p.add_argument(
        "--no-whitebox",
        action="store_true",
        help="black-box only: no K/V-matching token search and no soft-prompt bound",
    )
    p.add_argument(
        "--no-misspellings",
        action="store_true",
        help="try no spelling variants of the name (e.g. to attack a patch hardened on them "
        "with sources it never saw)",
    )
    p.add_argument(
        "--judge",
        default=None,
        help="judge weights (default: the embedded model's); required for any other model, "
        "which must be a toy-world checkpoint for the judge to mean anything",
    )
    p.add_argument("--out-dir", default="fmn-attack", help="where attack.json/.png go")
    p.add_argument(
        "--record",
        metavar="NAME",
        help="store asr_before, asr_after and no_attack_after with registry patch NAME",
    )
    p.add_argument(
        "--registry",
        metavar="DIR",
        default=None,
        help="registry folder for --record (default: $FMN_REGISTRY, else the user data folder)",
    )
    p.add_argument("--force", action="store_true", help="apply patches made for another base")
    add_registry_commands(sub)
    add_correct_commands(sub, _model_args)  # fmn correct, disentangle, erase-broad
    add_evaluate_command(sub, _model_args)  # fmn evaluate

    p = sub.add_parser(
        "gui",
        help="open the desktop app",
        description="Open Forget-Me-Not Studio, the desktop app (needs PySide6: "
        "pip install 'forget-me-not-studio[gui]').",
    )
    return parser


def _resolve_device(args) -> tuple[str, object]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if args.dtype:
        dtype = names[args.dtype]
    else:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if device == "cpu" and dtype != torch.float32:
        raise UsageError("fp16/bf16 are for CUDA; use --dtype fp32 on the CPU")
    return device, dtype


def _load(args):
    from fmn_desktop.workflows import open_model

    device, dtype = _resolve_device(args)
    with _status(f"loading {args.model}"):
        return open_model(
            args.model,
            device=device,
            dtype=dtype,
            family=args.family,
            prediction_type=args.prediction_type,
            config=args.config,
        )


class _status:
    """A one-line status on stderr for short waits."""

    def __init__(self, text: str):
        self.text = text

    def __enter__(self):
        print(f"{self.text} ...", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        return False


def step_bar(total: int, verb: str):
    """A progress bar on stderr and the callback that feeds it from a training job's progress
    items (`phase` "references" while reference images are drawn, then one per step)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=verb, unit="step", file=sys.stderr)

    def progress(p):
        if p.phase != "train":  # "references", "attack": no step of its own
            bar.set_description("reference images" if p.phase == "references" else p.phase)
            return
        bar.set_description(verb)
        bar.update(1)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    return bar, progress


def cmd_forget(args) -> int:
    from fmn_desktop.resteer import ForgetConfig
    from fmn_desktop.workflows import forget_to_file, with_model_defaults

    config = ForgetConfig(
        concepts=args.concept,
        kind=args.kind,
        templates=args.template,
        steps=args.steps,
        lr=args.lr,
        trainable=args.trainable,
        lora_rank=args.lora_rank,
        positions=args.positions,
        preserve=args.preserve,
        term=args.term,
        retain_weight=args.retain_weight,
        anchor=args.anchor,
        anchor_weight=args.anchor_weight,
        anchor_guidance=args.anchor_guidance,
        resteer_weight=args.resteer_weight,
        retain_prompts=args.retain_prompt,
        batch_size=args.batch_size,
        mode=args.mode,
        num_references=args.num_references,
        reference_dir=args.references,
        seed=args.seed,
    )
    harden = None
    if args.harden:
        from fmn_desktop.attack.harden import HardenSettings

        harden = HardenSettings(rounds=args.harden, spellings=args.harden_spellings,
                                seed=args.seed)
    model = _load(args)
    config = with_model_defaults(model, config)
    bar, progress = step_bar(config.steps * (1 + args.harden), "re-steering")

    try:
        outcome = forget_to_file(
            model,
            config,
            args.out,
            fmt=args.format,
            export_rank=args.export_rank,
            progress=progress,
            harden=harden,
        )
    finally:
        bar.close()
    extra = "" if outcome.lora_error is None else f", LoRA relative error {outcome.lora_error:.4f}"
    print(
        f"wrote {outcome.path} ({outcome.path.stat().st_size / 1024:.1f} KiB, "
        f"{outcome.seconds:.1f} s, final loss {outcome.final_loss:.4f}{extra})"
    )
    return 0


def cmd_invert(args) -> int:
    from tqdm import tqdm

    from fmn_desktop.inversion import learn_tokens, save_embedding

    config = _inversion_config(args)
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name ending in .safetensors")
    model = _load(args)
    bar = tqdm(total=config.steps, desc="inversion", unit="step", file=sys.stderr)

    def progress(p):
        if p.phase == "train":
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.4f}")

    try:
        result = learn_tokens(model.pipe, args.images, config=config, progress=progress)
    finally:
        bar.close()
    result.learned.meta["base_fingerprint"] = model.fingerprint or ""
    save_embedding(result.learned, out)
    learned = result.learned
    print(
        f"wrote {out} ({learned.placeholder}: {learned.num_vectors} vectors of width "
        f"{learned.width}; denoising loss on fixed draws {result.loss_before:.5f} -> "
        f"{result.loss_after:.5f}; {result.seconds:.1f} s)"
    )
    return 0


def cmd_forget_photos(args) -> int:
    from tqdm import tqdm

    from fmn_desktop.resteer import ForgetConfig
    from fmn_desktop.workflows import forget_from_photos

    inversion = None if args.tokens else _inversion_config(args)
    config = ForgetConfig(
        concepts=[args.token],
        kind="identity",
        steps=args.steps,
        lr=args.lr,
        trainable=args.trainable,
        retain_weight=args.retain_weight,
        retain_prompts=args.retain_prompt,
        seed=args.seed,
    )
    model = _load(args)
    bars: dict[str, tqdm] = {}

    def progress(p):
        if p.stage == "names":
            print(p.message, file=sys.stderr, flush=True)
            return
        if p.step == 0:
            return
        bar = bars.get(p.stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[p.stage] = tqdm(
                total=p.total,
                desc="inversion" if p.stage == "inversion" else "re-steering",
                unit="step",
                file=sys.stderr,
            )
        bar.update(1)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    try:
        outcome = forget_from_photos(
            model,
            args.images,
            args.out,
            placeholder=args.token,
            inversion=inversion,
            tokens=args.tokens,
            embedding_out=args.embedding_out,
            names=args.name,
            discover=not args.no_discover,
            search_vocabulary=args.search_vocabulary,
            threshold=args.threshold,
            config=config,
            fmt=args.format,
            progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    inv = outcome.inversion
    if inv is not None:
        print(
            f"learned {inv.learned.placeholder} ({inv.learned.num_vectors} vectors, denoising "
            f"loss {inv.loss_before:.5f} -> {inv.loss_after:.5f}, {inv.seconds:.1f} s)"
        )
    if outcome.discovery is not None:
        d = outcome.discovery
        shown = [c for c in d.names if c.accepted or c.source == "given"][:8]
        for c in shown:
            state = "forgotten too"
            if not c.accepted:
                state = "forgotten as given, though below the threshold"
            print(f"name {c.text!r}: score {c.image_score:.2f} on the photos, {state}")
        if d.flagged_prompts:
            print(
                "dropped from the preservation set: "
                + "; ".join(f"{p!r} ({s:.2f})" for p, s in d.flagged_prompts)
            )
    f = outcome.forget
    print(
        f"re-steered {', '.join(outcome.concepts)} ({f.patch.meta.hyperparameters['steps']} "
        f"steps, {f.seconds:.1f} s, final loss {f.final_loss:.4f})"
    )
    print(
        f"wrote {outcome.patch_path} ({outcome.patch_path.stat().st_size / 1024:.1f} KiB) "
        f"and {outcome.embedding_path}; total {outcome.seconds:.0f} s"
    )
    return 0


def cmd_apply(args) -> int:
    from fmn_desktop.workflows import apply_to_file, parse_patch_spec

    specs = [parse_patch_spec(s) for s in args.patches]
    model = _load(args)
    with _status(f"writing {args.out}"):
        out = apply_to_file(model, specs, args.out, force=args.force)
    print(f"wrote {out}")
    return 0


def cmd_generate(args) -> int:
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.workflows import (
        generate_images,
        grid_image,
        parse_patch_spec,
        read_patches,
        save_png,
        side_by_side,
    )

    model = _load(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    specs = [parse_patch_spec(s) for s in args.patch]
    patches = read_patches(model, specs)
    kw = dict(steps=args.steps, guidance=args.cfg, size=args.size)
    before = grid_image(
        generate_images(model.pipe, args.prompt, seeds, **kw),
        args.prompt,
        title="base model" if patches else None,
    )
    image = before
    if patches:
        with PatchedUNet(model.pipe.unet, patches, fingerprint=model.fingerprint, force=args.force):
            after = grid_image(
                generate_images(model.pipe, args.prompt, seeds, **kw),
                args.prompt,
                title="patched: " + ", ".join(f"{s.path.name}:{s.strength:g}" for s in specs),
            )
        image = side_by_side(before, after)
    save_png(image, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_inspect(args) -> int:
    from fmn_desktop.workflows import describe_patch

    info = describe_patch(args.patch)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    rows = [
        ("file", f"{info['file']} ({info['bytes'] / 1024:.1f} KiB)"),
        ("kind", f"{info['kind']} ({info['method']})"),
        ("concepts", ", ".join(info["concepts"]) or "-"),
        ("format", info["format"] + (f", rank {info['ranks']}" if info["ranks"] else "")),
        ("family", info["family"] or "-"),
        ("base model", info["base_fingerprint"][:16] or "-"),
        ("created", info["created"] or "-"),
        (
            "tensors",
            f"{info['tensors']} ({info['parameters']:,} parameters, |dW| {info['norm']:.4g})",
        ),
    ]
    for key in sorted(info["hyperparameters"]):
        rows.append((f"  {key}", json.dumps(info["hyperparameters"][key])))
    for key, value in sorted(info["scores"].items()):
        rows.append((f"score {key}", json.dumps(value)))
    for key, value in sorted(info["extra"].items()):
        rows.append((key, value))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_demo(args) -> int:
    from fmn_desktop.demo import run_demo

    return run_demo(concept=args.concept, out_dir=Path(args.out_dir), steps=args.steps)


def cmd_bench(args) -> int:
    from fmn_desktop.demo import demo_config, toy_retain_prompts
    from fmn_desktop.evaluate.bench import default_items, require_plots, run_bench, write_report
    from fmn_desktop.evaluate.scores import EvalSettings
    from fmn_desktop.toyworld import CONCEPTS, load_judge
    from fmn_desktop.workflows import open_model

    require_plots()  # before the long run, not after it
    items = default_items()
    if args.only:
        items = [i for i in items if i.name in args.only or i.category in args.only]
        if not items:
            raise UsageError("--only matched no item; items are concept names or categories")
    model = open_model(args.model)
    model.family = "toy"
    settings = EvalSettings(seeds=args.seeds, steps=args.sampler_steps)

    def make_config(item):
        config = demo_config(CONCEPTS[item.concepts[0]], args.steps, args.mode)
        config.concepts = list(item.concepts)
        config.retain_prompts = toy_retain_prompts(item.concepts)
        return config

    rows = run_bench(
        model.pipe,
        load_judge(args.judge),
        make_config,
        model.fingerprint or "",
        items,
        settings,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    sample = make_config(items[0])
    paths = write_report(
        rows,
        args.out_dir,
        "ConceptBench (toy world)",
        {
            "eval_seeds": settings.seeds,
            "sampler_steps": settings.steps,
            "cfg": settings.guidance,
            "mode": sample.mode,
            "forget_steps": sample.steps,
            "trainable": sample.trainable,
            "lr": sample.effective_lr(),
            "positions": sample.positions,
            "preserve": sample.preserve,
            "retain_weight": sample.retain_weight,
        },
    )
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    return 0


def judged_concept(args, needs: str):
    """The toy-world concept of `--concept`, checked: scores need the toy world's judge (the
    embedded model's, or `--judge FILE` for a toy-world checkpoint). `needs` words the error,
    e.g. "scoring an attack needs"."""
    from fmn_desktop.toyworld import CONCEPTS
    from fmn_desktop.workflows import DEFAULT_MODEL

    if args.concept not in CONCEPTS:
        raise UsageError(
            f"unknown concept {args.concept!r}: the judge knows the toy world's "
            f"concepts only ({', '.join(CONCEPTS)})"
        )
    if args.model not in (None, "", DEFAULT_MODEL) and args.judge is None:
        raise UsageError(
            f"{needs} a judge, and only the embedded model has one; give "
            "--judge FILE for a toy-world checkpoint (no judge exists for other models)"
        )
    return CONCEPTS[args.concept]


def patches_and_record(args):
    """The patch specs of `--patch` and the registry record of `--record` (figures belong to
    one patch: with --record, --patch may only name that patch's file, or be left out)."""
    from fmn_desktop.workflows import PatchSpec, parse_patch_spec

    specs = [parse_patch_spec(s) for s in args.patch]
    record = None
    if args.record:
        from fmn_desktop.registry import open_registry
        from fmn_desktop.registry.store import sha256_file

        with open_registry(args.registry) as reg:
            record = reg.get_patch(args.record)
        if not specs:
            specs = [PatchSpec(record.path, 1.0)]
        elif len(specs) != 1 or sha256_file(specs[0].path) != record.sha256:
            raise UsageError(
                f"--record {args.record}: the figures belong to one patch; give that patch "
                f"alone (or no --patch to use the registry's copy)"
            )
    return specs, record


def cmd_attack(args) -> int:
    from fmn_desktop.attack import AttackSettings, format_table, run_attack, write_report
    from fmn_desktop.attack.candidates import prompt_words
    from fmn_desktop.toyworld import CONCEPTS, load_judge
    from fmn_desktop.workflows import read_patches

    concept = judged_concept(args, "scoring an attack needs")
    if args.budget < 1 or args.seeds < 1 or args.chance < 0:
        raise UsageError("--budget and --seeds must be at least 1, --chance at least 0")
    if not 0.0 < args.threshold < 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    if not args.patch and not args.record:
        raise UsageError(
            "give --patch FILE[:STRENGTH], or --record NAME to attack a registry patch"
        )
    specs, record = patches_and_record(args)
    settings = AttackSettings(
        budget=args.budget,
        seeds=args.seeds,
        first_seed=args.seed,
        steps=args.steps,
        guidance=args.cfg,
        threshold=args.threshold,
        whitebox=not args.no_whitebox,
        misspellings=0 if args.no_misspellings else AttackSettings.misspellings,
        chance=args.chance,
    )
    model = _load(args)
    judge = load_judge(args.judge)
    patches = read_patches(model, specs)
    info = [{"file": str(s.path), "strength": s.strength} for s in specs]
    words = prompt_words(p for c in CONCEPTS.values() for p in c.prompts())
    report = run_attack(
        model.pipe,
        judge,
        concept,
        patches,
        settings,
        fingerprint=model.fingerprint,
        force=args.force,
        extra_words=words,
        model_name=str(args.model),
        patch_info=info,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(format_table(report))
    paths = write_report(report, args.out_dir)
    print(f"wrote {paths['json']}, {paths['png']}")
    if record is not None:
        from fmn_desktop.attack import record_in_registry
        from fmn_desktop.registry import open_registry

        with open_registry(args.registry) as reg:
            rows = record_in_registry(reg, record.id, report, strength=specs[0].strength)
        print(f"recorded {', '.join(r.metric for r in rows)} with registry patch {record.name}")
    return 0


COMMANDS = {
    "forget": cmd_forget,
    "forget-photos": cmd_forget_photos,
    "invert": cmd_invert,
    "apply": cmd_apply,
    "generate": cmd_generate,
    "inspect": cmd_inspect,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "attack": cmd_attack,
}
COMMANDS["gui"] = lambda args: gui_main(threads=args.threads)
COMMANDS.update(REGISTRY_COMMANDS)  # fmn patches ..., fmn stack ...
COMMANDS.update(CORRECT_COMMANDS)  # fmn correct, disentangle, erase-broad
COMMANDS.update(EVALUATE_COMMANDS)  # fmn evaluate


def main(argv: list[str] | None = None) -> int:
    configure_runtime()
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    from fmn_desktop.runtime import set_threads

    # Library deprecation chatter (scheduler configs of old checkpoints) is not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    set_threads(args.threads)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except UsageError as exc:
        print(f"fmn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FmnError, ValueError) as exc:
        print(f"fmn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fmn inspect ... | head`): not an error of ours. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def gui_main(threads: int | None = None) -> int:
    """`fmn-desktop` and `fmn gui`: the desktop app."""
    configure_runtime()
    try:
        from fmn_desktop.ui.app import main as app_main
    except ImportError as exc:
        print(
            f"the desktop app needs PySide6 ({exc}); install it with "
            "pip install 'forget-me-not-studio[gui]'",
            file=sys.stderr,
        )
        return 1
    return app_main(threads=threads)


if __name__ == "__main__":
    sys.exit(main())

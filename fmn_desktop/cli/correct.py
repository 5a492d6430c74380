"""`fmn correct`, `fmn disentangle`, `fmn erase-broad`: correction and broad-removal patches."""

from __future__ import annotations

from fmn_desktop.cli.common import (
    check_out,
    finite_float,
    load_model,
    model_args,
    nonneg_float,
    nonneg_int,
    out_args,
    positive_float,
    positive_int,
    seed_int,
    status,
    step_bar,
)

DEFAULTS_NOTE = "defaults measured on the embedded model: docs/research/CORRECTION_AND_BROAD.md"


def add_parsers(sub) -> None:
    from fmn_desktop.correct.broad import BroadConfig
    from fmn_desktop.correct.closed_form import TARGET_SETS, CorrectConfig
    from fmn_desktop.correct.disentangle import DisentangleConfig
    from fmn_desktop.prompts.tokens import POSITION_MODES

    cf = CorrectConfig.__dataclass_fields__
    df = DisentangleConfig.__dataclass_fields__
    bf = BroadConfig.__dataclass_fields__
    p = sub.add_parser(
        "correct",
        help="redirect a concept towards a guide (closed form): write a correction patch",
        description="Closed-form (UCE-style) edit of the attn2 to_k/to_v weights so that "
        "prompts naming CONCEPT read as the same prompts naming GUIDE (optionally pushed away "
        "from NEGATIVE), while ordinary prompts keep their keys and values. " + DEFAULTS_NOTE,
        epilog="examples: fmn correct --concept balloon --guide 'blue balloon' "
        "--negative 'red balloon' --strength 2 --out blue.safetensors; "
        "fmn correct --concept knight --guide knight --negative Gorvak --strength 3 --out k.safetensors",
    )
    model_args(p)
    p.add_argument("--concept", required=True, help="text of the concept to redirect")
    p.add_argument("--guide", required=True, help="text the concept should read as")
    p.add_argument("--negative", help="text to push the concept away from (needs --strength)")
    p.add_argument(
        "--strength",
        type=finite_float,
        default=cf["strength"].default,
        help="target = guide + strength * (guide - negative) (default: %(default)s)",
    )
    p.add_argument(
        "--template",
        action="append",
        help="prompt template with {} for the concept (repeatable; default: "
        "'a {}', 'a photo of a {}', '{}', 'a photo of {}')",
    )
    p.add_argument(
        "--preserve-prompt",
        action="append",
        help="prompt to keep unchanged (repeatable; default: the toy world's "
        "captions on the embedded model, none elsewhere)",
    )
    p.add_argument("--preserve-weight", type=nonneg_float, default=cf["preserve_weight"].default)
    p.add_argument("--ridge", type=nonneg_float, default=cf["ridge"].default)
    p.add_argument("--positions", choices=POSITION_MODES, default=cf["positions"].default)
    p.add_argument("--targets", choices=TARGET_SETS, default=cf["targets"].default)
    p.add_argument(
        "--format",
        choices=["diff", "lora"],
        default="diff",
        help="diff: exact dense deltas (default); lora: SVD to low rank",
    )
    out_args(p, "patch file to write (.safetensors)")
    p.set_defaults(handler=cmd_correct)

    p = sub.add_parser(
        "disentangle",
        help="let a generic concept come through where it draws one identity (fine-tune)",
        description="For a generic concept that draws one particular identity (on the "
        "embedded model 'knight' draws Gorvak), train every attn2 layer's output for the "
        "concept's prompts away from the same prompts naming DOMINANT (the re-steering job's "
        "anchor term, negative guidance), while ordinary prompts and DOMINANT's own prompts "
        "keep theirs. Stronger settings let more of the generic concept through and cost more "
        "of DOMINANT's own prompts. " + DEFAULTS_NOTE,
        epilog="example: fmn disentangle --concept knight --dominant Gorvak --out knight.safetensors",
    )
    model_args(p)
    p.add_argument("--concept", required=True, help="the generic concept (e.g. knight)")
    p.add_argument("--dominant", required=True, help="the identity it collapses onto (e.g. Gorvak)")
    p.add_argument(
        "--strength",
        type=finite_float,
        default=df["strength"].default,
        help="target = concept + strength * (concept - dominant), per layer (default: %(default)s)",
    )
    p.add_argument(
        "--template", action="append", help="prompt template with {} for the concept (repeatable)"
    )
    p.add_argument(
        "--no-hold-dominant",
        action="store_true",
        help="do not hold the dominant identity's own prompts in place",
    )
    p.add_argument(
        "--dominant-template",
        action="append",
        help="template with {} for the dominant's prompts held in place "
        "(repeatable; default: four style variants)",
    )
    p.add_argument(
        "--preserve-prompt",
        action="append",
        help="prompt to keep unchanged (repeatable; default: the model's)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="optimisation steps (default: the re-steering job's)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--format", choices=["diff", "lora"], default="diff")
    out_args(p, "patch file to write (.safetensors)")
    p.set_defaults(handler=cmd_disentangle)

    p = sub.add_parser(
        "erase-broad",
        help="remove an attribute drawn under several words or none (ESD-style fine-tune)",
        description="Fine-tune attn2 weights with negative guidance so that prompts with any of "
        "WORDS, and the same prompts without them, move away from what the words draw; other "
        "prompts keep the base prediction. " + DEFAULTS_NOTE,
        epilog="example: fmn erase-broad --words cursed --words toxic --out safe.safetensors",
    )
    model_args(p)
    p.add_argument(
        "--words",
        action="append",
        required=True,
        help="a word that draws the attribute (repeatable)",
    )
    p.add_argument("--template", action="append", help="prompt template with {} for the word")
    p.add_argument("--steps", type=positive_int, default=bf["steps"].default)
    p.add_argument("--lr", type=positive_float, default=bf["lr"].default)
    p.add_argument("--eta", type=finite_float, default=bf["eta"].default, help="negative guidance")
    p.add_argument("--trainable", choices=["kv", "attn2"], default=bf["trainable"].default)
    p.add_argument(
        "--uncaptioned-weight", type=nonneg_float, default=bf["uncaptioned_weight"].default
    )
    p.add_argument("--preserve-weight", type=nonneg_float, default=bf["preserve_weight"].default)
    p.add_argument(
        "--ordinary-references",
        type=nonneg_int,
        default=bf["ordinary_references"].default,
        help='latents drawn from the preservation prompts, on which they and "" '
        "keep the base prediction (default: %(default)s; 0: only on the "
        "attribute's references)",
    )
    p.add_argument("--preserve-prompt", action="append")
    p.add_argument("--batch-size", type=positive_int, default=bf["batch_size"].default)
    p.add_argument("--num-references", type=positive_int, default=bf["num_references"].default)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--format", choices=["diff", "lora"], default="diff")
    out_args(p, "patch file to write (.safetensors)")
    p.set_defaults(handler=cmd_erase_broad)


def cmd_correct(args) -> int:
    from fmn_desktop.correct.closed_form import CorrectConfig
    from fmn_desktop.services.correct import correct_to_file

    config = CorrectConfig(
        concept=args.concept,
        guide=args.guide,
        negative=args.negative,
        strength=args.strength,
        templates=args.template,
        preserve_weight=args.preserve_weight,
        ridge=args.ridge,
        positions=args.positions,
        targets=args.targets,
    )
    check_out(args.out, args.overwrite)
    model = load_model(args)
    with status("solving"):
        outcome = correct_to_file(model, config, args.out, args.format, args.preserve_prompt)
    print(outcome.message)
    return 0


def cmd_disentangle(args) -> int:
    from fmn_desktop.correct.disentangle import DisentangleConfig
    from fmn_desktop.services.correct import disentangle_to_file

    given = {"dominant_templates": list(args.dominant_template)} if args.dominant_template else {}
    config = DisentangleConfig(
        concept=args.concept,
        dominant=args.dominant,
        strength=args.strength,
        templates=args.template,
        hold_dominant=not args.no_hold_dominant,
        steps=args.steps,
        seed=args.seed,
        **given,
    )
    check_out(args.out, args.overwrite)
    model = load_model(args)
    return _trained(
        config.forget_config([]).steps,
        "disentangling",
        lambda progress: disentangle_to_file(
            model, config, args.out, args.format, args.preserve_prompt, progress
        ),
    )


def cmd_erase_broad(args) -> int:
    from fmn_desktop.correct.broad import BroadConfig
    from fmn_desktop.services.correct import erase_broad_to_file

    config = BroadConfig(
        words=args.words,
        templates=args.template,
        steps=args.steps,
        lr=args.lr,
        eta=args.eta,
        trainable=args.trainable,
        uncaptioned_weight=args.uncaptioned_weight,
        preserve_weight=args.preserve_weight,
        ordinary_references=args.ordinary_references,
        batch_size=args.batch_size,
        num_references=args.num_references,
        seed=args.seed,
    )
    check_out(args.out, args.overwrite)
    model = load_model(args)
    return _trained(
        config.steps,
        "erasing",
        lambda progress: erase_broad_to_file(
            model, config, args.out, args.format, args.preserve_prompt, progress
        ),
    )


def _trained(total: int, verb: str, run) -> int:
    """Run a training workflow (`run(progress)`) under a progress bar; print what it wrote."""
    bar, progress = step_bar(total, verb)
    try:
        outcome = run(progress)
    finally:
        bar.close()
    print(outcome.message)
    return 0

"""`fmn correct`, `fmn disentangle`, `fmn erase-broad`: correction and broad-removal patches."""

from __future__ import annotations

from fmn_desktop.cli.common import (
    add_config_args,
    cache_args,
    check_out,
    config_from_args,
    load_model,
    model_args,
    out_args,
    reference_cache_root,
    status,
    step_bar,
)

DEFAULTS_NOTE = "defaults measured on the embedded model: docs/research/CORRECTION_AND_BROAD.md"


def add_parsers(sub) -> None:
    from fmn_desktop.correct.config import BroadConfig, CorrectConfig
    from fmn_desktop.correct.disentangle import DisentangleConfig

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
    add_config_args(p, CorrectConfig)
    _output_args(p)
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
    add_config_args(p, DisentangleConfig)
    _output_args(p)
    cache_args(p)
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
    add_config_args(p, BroadConfig)
    _output_args(p)
    cache_args(p)
    p.set_defaults(handler=cmd_erase_broad)


def _output_args(p) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--format",
        choices=["diff", "lora"],
        default="diff",
        help="diff: exact dense deltas (default); lora: SVD to low rank",
    )
    out_args(g, "patch file to write (.safetensors)")


def cmd_correct(args) -> int:
    from fmn_desktop.correct.config import CorrectConfig
    from fmn_desktop.services.correct import correct_to_file

    config = config_from_args(CorrectConfig, args)
    check_out(args.out, args.overwrite)
    model = load_model(args)
    with status("solving"):
        outcome = correct_to_file(model, config, args.out, args.format)
    print(outcome.message)
    return 0


def cmd_disentangle(args) -> int:
    from fmn_desktop.correct.disentangle import DisentangleConfig
    from fmn_desktop.services.correct import disentangle_to_file

    config = config_from_args(DisentangleConfig, args)
    check_out(args.out, args.overwrite)
    model = load_model(args)
    return _trained(
        config.forget_config([]).steps,
        "disentangling",
        lambda progress: disentangle_to_file(
            model, config, args.out, args.format, None, progress, cache=_cache(args)
        ),
    )


def cmd_erase_broad(args) -> int:
    from fmn_desktop.correct.config import BroadConfig
    from fmn_desktop.services.correct import erase_broad_to_file

    config = config_from_args(BroadConfig, args)
    check_out(args.out, args.overwrite)
    model = load_model(args)
    return _trained(
        config.steps,
        "erasing",
        lambda progress: erase_broad_to_file(
            model, config, args.out, args.format, None, progress, cache=_cache(args)
        ),
    )


def _cache(args):
    from fmn_desktop.services.cache import reference_cache

    root = reference_cache_root(args)
    return reference_cache(root, root is not None)


def _trained(total: int, verb: str, run) -> int:
    """Run a training workflow (`run(progress)`) under a progress bar; print what it wrote."""
    bar, progress = step_bar(total, verb)
    try:
        outcome = run(progress)
    finally:
        bar.close()
    print(outcome.message)
    return 0

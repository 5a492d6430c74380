"""`fmn apply`, `fmn generate`, `fmn inspect`: patches on a model, images, a patch's summary."""

from __future__ import annotations

import json

from fmn_desktop.cli.common import (
    MODEL_HELP,
    check_out,
    finite_float,
    image_count,
    image_size,
    load_model,
    model_args,
    out_args,
    patch_spec,
    positive_int,
    readable,
    safe,
    seed_int,
    stack_mode_arg,
    status,
)

SPEC_HELP = "a patch file, optionally with a strength: PATH:0.5 (finite, at most 100 either way)"


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "apply",
        help="write a patched model (diffusers folder or single file)",
        description="Apply patches (PATH[:STRENGTH]) to a model and write the "
        "result: a folder, or one .safetensors file in the LDM layout.",
    )
    model_args(p, positional=False)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument(
        "patches", nargs="+", metavar="PATCH[:STRENGTH]", type=patch_spec, help=SPEC_HELP
    )
    out_args(p, "a new folder (diffusers layout) or a file ending in .safetensors")
    stack_mode_arg(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="apply even if a patch was made for another base model, or patches conflict",
    )
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser(
        "generate",
        help="generate a grid of images, optionally before/after patches",
        description="Generate one row per prompt and one column per seed; with "
        "--patch, the grid shows the base model (left) and the patched one (right).",
    )
    model_args(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        type=patch_spec,
        metavar="PATH[:STRENGTH]",
        help="patch to apply (repeatable; strength default 1.0, at most 100 either way)",
    )
    p.add_argument(
        "--seeds", type=image_count, default=4, help="images per prompt, up to 256 (default: 4)"
    )
    p.add_argument("--seed", type=seed_int, default=0, help="first seed (default: 0)")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps (default: 20)")
    p.add_argument("--cfg", type=finite_float, default=5.0, help="guidance scale (default: 5)")
    p.add_argument(
        "--size", type=image_size, default=None, help="image size in pixels (a multiple of 8)"
    )
    stack_mode_arg(p)
    p.add_argument(
        "--force", action="store_true", help="apply patches made for another base, or that conflict"
    )
    out_args(p, "PNG file to write")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser(
        "inspect",
        help="show a patch file's metadata",
        description="Print what a patch is: concepts, method, base model, "
        "hyper-parameters, scores, size.",
    )
    p.add_argument("patch", help="patch file (.safetensors)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_inspect, torch_free=True)


def cmd_apply(args) -> int:
    from fmn_desktop.services.patches import apply_to_file

    check_out(args.out, args.overwrite, model=True)
    model = load_model(args)
    with status(f"writing {args.out}"):
        out = apply_to_file(
            model, args.patches, args.out, args.force, args.overwrite, mode=args.stack_mode
        )
    print(f"wrote {out}")
    return 0


def cmd_generate(args) -> int:
    from fmn_desktop.services.images import generate_grid_file

    check_out(args.out, args.overwrite)
    model = load_model(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    out = generate_grid_file(
        model,
        args.prompt,
        seeds,
        args.out,
        args.patch,
        steps=args.steps,
        guidance=args.cfg,
        size=args.size,
        force=args.force,
        overwrite=args.overwrite,
        mode=args.stack_mode,
    )
    print(f"wrote {out}")
    return 0


def cmd_inspect(args) -> int:
    from fmn_desktop.services.patches import describe_patch

    info = describe_patch(args.patch)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    ranks = ", ".join(str(r) for r in info["ranks"])
    rows = [
        ("file", f"{info['file']} ({info['bytes'] / 1024:.1f} KiB)"),
        ("kind", f"{info['kind']} ({info['method']})"),
        ("concepts", ", ".join(info["concepts"]) or "-"),
        ("format", info["format"] + (f", rank {ranks}" if ranks else "")),
        ("family", info["family"] or "-"),
        ("base model", info["base_fingerprint"][:16] or "-"),
        ("created", info["created"] or "-"),
        (
            "tensors",
            f"{info['tensors']} ({info['parameters']:,} parameters, |dW| {info['norm']:.4g})",
        ),
    ]
    for key in sorted(info["hyperparameters"]):
        rows.append((f"  {key}", readable(info["hyperparameters"][key])))
    for key, value in sorted(info["scores"].items()):
        rows.append((f"score {key}", readable(value)))
    for key, value in sorted(info["extra"].items()):
        rows.append((key, value))
    rows = [(safe(k), safe(v)) for k, v in rows]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0

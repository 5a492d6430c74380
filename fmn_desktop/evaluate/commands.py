"""`fmn evaluate`: a patch's M-Score and retention before and after, printed, written into the
patch file's metadata on request, and stored with its registry record on request."""

from __future__ import annotations

import json


def add_evaluate_command(sub, model_args) -> None:
    p = sub.add_parser(
        "evaluate",
        help="M-Score of a concept and retention of the others, before and after patches",
        description="Generate the concept's evaluation prompts (SEEDS seeds each) and every "
        "other concept's (OTHER_SEEDS each) without and with the patches, score them with the "
        "embedded model's judge, and print the M-Score (how much of the concept is drawn) and "
        "the retention of everything else, with 95%% intervals. These are the figures the "
        "app stores with a patch it makes. Needs the toy world's judge "
        "(docs/research/CONCEPTBENCH.md).",
        epilog="example: fmn evaluate --patch forget-Zorbu.safetensors --concept Zorbu "
        "--record forget-zorbu",
    )
    model_args(p)
    p.add_argument("--patch", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="patch to apply (repeatable; with --record and no --patch, the "
                   "registry patch itself)")
    p.add_argument("--concept", required=True, help="a concept of the toy world, e.g. Zorbu")
    p.add_argument("--seeds", type=int, default=2,
                   help="seeds per evaluation prompt of the concept (default: %(default)s)")
    p.add_argument("--other-seeds", type=int, default=1,
                   help="seeds per prompt of every other concept (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    p.add_argument("--judge", help="judge weights (default: the embedded model's)")
    p.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    p.add_argument("--write-scores", action="store_true",
                   help="store the scores in the (single) patch file's metadata, atomically")
    p.add_argument("--record", metavar="NAME",
                   help="store mscore and retention with registry patch NAME")
    p.add_argument("--registry", metavar="DIR", default=None,
                   help="registry folder for --record (default: $FMN_REGISTRY, else the user "
                   "data folder)")
    p.add_argument("--force", action="store_true", help="apply patches made for another base")


def cmd_evaluate(args) -> int:
    from fmn_desktop.cli import UsageError, _load, judged_concept, patches_and_record
    from fmn_desktop.errors import FmnError
    from fmn_desktop.evaluate.patch_scores import evaluate_patches, format_scores, registry_rows
    from fmn_desktop.fileio import atomic_write_bytes
    from fmn_desktop.patch.format import load_patch, save_patch
    from fmn_desktop.toyworld import load_judge
    from fmn_desktop.workflows import read_patches

    concept = judged_concept(args, "scores need")
    if args.seeds < 1 or args.other_seeds < 1 or args.steps < 1:
        raise UsageError("--seeds, --other-seeds and --steps must be at least 1")
    if not args.patch and not args.record:
        raise UsageError("give --patch FILE[:STRENGTH], or --record NAME for a registry patch")
    if args.write_scores and not args.patch:
        raise UsageError("--write-scores rewrites a patch file of yours: name it with --patch "
                         "(the registry's own copy stays as it was registered)")
    specs, record = patches_and_record(args)
    if args.write_scores and len(specs) != 1:
        raise UsageError("--write-scores stores the figures in one patch file: give one --patch")
    model = _load(args)
    patches = read_patches(model, specs)
    scores = evaluate_patches(model, patches, concept, args.seeds, args.steps,
                              other_seeds=args.other_seeds, judge=load_judge(args.judge),
                              force=args.force)
    print(format_scores(scores, concept.name))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(scores, indent=1).encode())
        print(f"wrote {args.json}")
    if args.write_scores:
        path = specs[0].path
        patch = load_patch(path)
        patch.meta.scores = scores
        try:
            save_patch(patch, path)
        except OSError as err:
            raise FmnError(f"could not write the scores into {path}: {err}") from err
        print(f"stored the scores in {path}")
    if record is not None:
        from fmn_desktop.registry import open_registry

        settings = {"seeds": args.seeds, "other_seeds": args.other_seeds, "steps": args.steps,
                    "strength": specs[0].strength}
        with open_registry(args.registry) as reg:
            rows = reg.add_evaluations(registry_rows(scores, concept.name, settings),
                                       patch=record.id)
        print(f"recorded {', '.join(r.metric for r in rows)} with registry patch {record.name}")
    return 0


EVALUATE_COMMANDS = {"evaluate": cmd_evaluate}

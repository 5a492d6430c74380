"""`fmn evaluate`, `fmn attack`, `fmn bench`, `fmn demo`: scores on a model with a judge."""

from __future__ import annotations

import sys
from pathlib import Path

from fmn_desktop.cli.common import (
    UsageError,
    cache_args,
    check_out,
    count_bar,
    finite_float,
    forget_default,
    fraction,
    load_model,
    model_args,
    nonneg_int,
    positive_int,
    reference_cache_root,
    registry_arg,
    seed_int,
    stack_mode_arg,
)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score patches or a stack: M-Score, other words kept, retention, neighbours",
        description="Generate held-out prompts (ones no job trained on: every colour, style, "
        "unsafe word and slot the concept combines with) at seeds no job drew, without and "
        "with the patches, and score the images with the embedded model's judge: per forgotten "
        "concept its M-Score (how much of it is drawn), the other words of its prompts still "
        "drawn and what the judge reads instead; then the retention of everything else and "
        "the concepts that lost the most. Several patches are composed as a stack is (same "
        "conflict check). 95% intervals throughout. Needs the toy world's judge "
        "(docs/research/CONCEPTBENCH.md).",
        epilog="examples: fmn evaluate --patch patches/forget-Zorbu.safetensors; "
        "fmn evaluate --patch patches/forget-Zorbu.safetensors --patch "
        "patches/forget-circle.safetensors --stack-mode fused",
    )
    model_args(p)
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="patch to apply (repeatable; with --record and no --patch, the registry patch itself)",
    )
    p.add_argument(
        "--concept",
        action="append",
        default=[],
        help="a concept of the toy world to score, e.g. Zorbu (repeatable; default: the "
        "concepts the patches name)",
    )
    stack_mode_arg(p, default=None)
    p.add_argument(
        "--prompts",
        type=positive_int,
        default=24,
        help="held-out prompts per forgotten concept (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=2,
        help="seeds per held-out prompt of a forgotten concept (default: %(default)s)",
    )
    p.add_argument(
        "--neighbour-prompts",
        type=positive_int,
        default=3,
        help="held-out prompts per other concept (default: %(default)s)",
    )
    p.add_argument(
        "--other-seeds",
        type=positive_int,
        default=1,
        help="seeds per held-out prompt of every other concept (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=positive_int, default=20, help="sampling steps (default: %(default)s)"
    )
    p.add_argument("--judge", help="judge weights (default: the embedded model's)")
    p.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument(
        "--write-scores",
        action="store_true",
        help="store the scores in the (single) patch file's metadata, atomically",
    )
    p.add_argument("--record", metavar="NAME", help="store the scores with registry patch NAME")
    p.add_argument(
        "--stack",
        metavar="NAME",
        help="score registry stack NAME (its patches and mode) and store the scores with it",
    )
    registry_arg(p, " for --record and --stack")
    p.add_argument(
        "--force",
        action="store_true",
        help="apply patches made for another base, or that conflict",
    )
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="the two-minute tour on the embedded model",
        description="Load the embedded model, show a before grid, forget one "
        "concept, show the after grid, and print M-Score and retention.",
    )
    p.add_argument("--concept", default=None, help="concept to forget (default: the demo's)")
    p.add_argument("--out-dir", default="fmn-demo", help="where grids and the patch go")
    p.add_argument("--steps", type=positive_int, default=None, help="optimisation steps")
    cache_args(p)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="ConceptBench on the embedded model: forget each concept, score",
        description="Forget each identity, object and style of the embedded model "
        "and the unsafe stand-in, one at a time, and write M-Score before/after, "
        "retention and forget time as bench.md, bench.json and bench.png.",
    )
    p.add_argument("--out-dir", default="fmn-bench", help="where the report goes")
    p.add_argument(
        "--seeds", type=positive_int, default=8, help="seeds per evaluation prompt (default: 8)"
    )
    p.add_argument("--steps", type=positive_int, default=None, help="optimisation steps per forget")
    p.add_argument("--only", action="append", help="run only these items (repeatable)")
    p.add_argument(
        "--mode",
        choices=("faithful", "fast"),
        default=forget_default("mode"),
        help="forget mode of every item (default: %(default)s)",
    )
    p.add_argument(
        "--sampler-steps",
        type=positive_int,
        default=20,
        help="sampling steps of the evaluation images (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default="default",
        help="a toy-world pipeline folder (e.g. a training checkpoint); default: embedded",
    )
    p.add_argument("--judge", default=None, help="judge weights for --model (default: shipped)")
    cache_args(p)  # a cached item's forget time leaves out its reference images
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser(
        "attack",
        help="search for prompts that bring a forgotten concept back: attack success rate",
        description="Search, per evaluation prompt and seed, for a prompt whose image the "
        "judge reads as the concept (misspellings, embedding neighbours, white-box K/V "
        "matching, word edits), before and after the patches; print the no-attack rate and "
        "the attack success rate (ASR) with 95% Wilson intervals, write attack.json and "
        "attack.png. Scoring needs the toy world's judge (see docs/research/ATTACK.md).",
        epilog="example: fmn attack --patch patches/forget-Zorbu.safetensors --concept Zorbu "
        "--budget 64 --seeds 2",
    )
    model_args(p)
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
        "--budget",
        type=positive_int,
        default=64,
        help="scored images per target (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=2,
        help="seeds per evaluation prompt (default: %(default)s)",
    )
    p.add_argument("--seed", type=seed_int, default=1000, help="first seed (default: %(default)s)")
    p.add_argument(
        "--steps", type=positive_int, default=20, help="sampling steps (default: %(default)s)"
    )
    p.add_argument(
        "--cfg", type=finite_float, default=5.0, help="guidance scale (default: %(default)s)"
    )
    p.add_argument(
        "--threshold",
        type=fraction,
        default=0.5,
        help="judge presence counted as the concept (default: %(default)s)",
    )
    p.add_argument(
        "--chance",
        type=nonneg_int,
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
    stack_mode_arg(p)
    p.add_argument(
        "--force", action="store_true", help="apply patches made for another base, or that conflict"
    )
    p.set_defaults(handler=cmd_attack)


def _cache(args):
    from fmn_desktop.services.cache import reference_cache

    root = reference_cache_root(args)
    return reference_cache(root, root is not None)


def cmd_demo(args) -> int:
    from fmn_desktop.services.demo import run_demo

    return run_demo(
        concept=args.concept, out_dir=Path(args.out_dir), steps=args.steps, cache=_cache(args)
    )


def cmd_bench(args) -> int:
    from fmn_desktop.evaluate.bench import default_items, require_plots, run_bench, write_report
    from fmn_desktop.evaluate.scores import EvalSettings
    from fmn_desktop.services.defaults import demo_config, toy_preserve_prompts
    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld import CONCEPTS, load_judge

    require_plots()  # before the long run, not after it
    items = default_items()
    if args.only:
        items = [i for i in items if i.name in args.only or i.category in args.only]
        if not items:
            raise UsageError("--only matched no item; items are concept names or categories")
    model = open_model(args.model)
    model.mark_embedded()  # a toy-world checkpoint: its concepts are the world's
    settings = EvalSettings(seeds=args.seeds, steps=args.sampler_steps)

    def make_config(item):
        config = demo_config(CONCEPTS[item.concepts[0]], args.steps, args.mode)
        config.concepts = list(item.concepts)
        config.preserve_prompts = toy_preserve_prompts(item.concepts)
        return config

    rows = run_bench(
        model.pipe,
        load_judge(args.judge),
        make_config,
        model.fingerprint or "",
        items,
        settings,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        cache=_cache(args),
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
            "preserve_mode": sample.preserve_mode,
            "preserve_weight": sample.preserve_weight,
        },
    )
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    return 0


def cmd_attack(args) -> int:
    from fmn_desktop.attack import AttackSettings
    from fmn_desktop.services.attack import AttackRequest, attack_job
    from fmn_desktop.services.progress import JobContext, run_job

    check_judge(args, "scoring an attack needs")
    if args.budget < 1 or args.seeds < 1 or args.chance < 0:
        raise UsageError("--budget and --seeds must be at least 1, --chance at least 0")
    if not 0.0 < args.threshold < 1.0:
        raise UsageError("--threshold must be between 0 and 1")
    if not args.patch and not args.record:
        raise UsageError(
            "give --patch FILE[:STRENGTH], or --record NAME to attack a registry patch"
        )
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
    req = AttackRequest(
        resolve_record(args),
        args.concept,
        settings,
        registry_root=_registry_root(args) if args.record else None,
        record=args.record,
        out_dir=args.out_dir,
        judge=args.judge,
        force=args.force,
        mode=args.stack_mode,
    )
    model = load_model(args)

    def log(value):
        if value.text:
            print(value.text, file=sys.stderr, flush=True)

    done = run_job(attack_job(JobContext(log), model, req))
    print(done.table)
    print(f"wrote {done.paths['json']}, {done.paths['png']}")
    if done.record is not None:
        print(
            f"recorded {', '.join(r.metric for r in done.rows)} with registry patch "
            f"{done.record.name}"
        )
    return 0


def _registry_root(args) -> str | None:
    from fmn_desktop.registry.location import registry_dir

    return str(registry_dir(args.registry))


def cmd_evaluate(args) -> int:
    from fmn_desktop.evaluate.patch_scores import format_scores
    from fmn_desktop.services.evaluate import EvaluateRequest, evaluate_job
    from fmn_desktop.services.progress import JobContext, run_job

    if not args.patch and not args.record and not args.stack:
        raise UsageError(
            "give --patch FILE[:STRENGTH], --record NAME for a registry patch, or --stack NAME"
        )
    if args.stack and (args.patch or args.record):
        raise UsageError("--stack scores a registry stack alone (no --patch or --record)")
    if args.write_scores and len(args.patch) != 1:
        raise UsageError(
            "--write-scores rewrites one patch file of yours: name it with one "
            "--patch (the registry's own copy stays as it was registered)"
        )
    if args.json:
        check_out(args.json, args.overwrite)
    for name in args.concept:
        check_judge(args, "scores need", name)
    if not args.concept:
        check_judge(args, "scores need")
    specs = resolve_record(args)
    model = load_model(args)
    req = EvaluateRequest(
        list(args.concept),
        specs,
        seeds=args.seeds,
        other_seeds=args.other_seeds,
        steps=args.steps,
        prompts=args.prompts,
        neighbour_prompts=args.neighbour_prompts,
        mode=args.stack_mode,
        judge=args.judge,
        force=args.force,
        record=args.record,
        stack=args.stack,
        registry_root=_registry_root(args) if (args.record or args.stack) else None,
        write_scores=args.write_scores,
        json_out=args.json,
        overwrite=args.overwrite,
    )
    report, close = count_bar("image")
    try:
        done = run_job(evaluate_job(JobContext(report), model, req))
    finally:
        close()
    print(format_scores(done.scores, done.concept))
    for path in done.written:
        print(f"wrote {path}")
    if done.record is not None:
        what = "stack" if args.stack else "patch"
        print(
            f"recorded {', '.join(r.metric for r in done.rows)} with registry {what} "
            f"{done.record.name}"
        )
    return 0


def check_judge(args, needs: str, concept: str | None = None) -> None:
    """Before loading anything: the concept (`concept`, else `args.concept`, if any) must be
    the toy world's, and a model other than the embedded one needs `--judge`. `needs` words
    the error, e.g. "scores need"."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.services.model import is_default, world_concept

    name = concept if concept is not None else getattr(args, "concept", None)
    if isinstance(name, str):
        try:
            world_concept(name)
        except FmnError as exc:
            raise UsageError(str(exc)) from exc
    if not is_default(args.model) and args.judge is None:
        raise UsageError(
            f"{needs} a judge, and only the embedded model has one; give --judge FILE for "
            "a toy-world checkpoint (no judge exists for other models)"
        )


def resolve_record(args):
    """`--patch` specs, checked against `--record` before any model is loaded (figures
    belong to one patch: a mismatch is a usage error)."""
    from fmn_desktop.services.evaluate import RecordMismatchError, record_for
    from fmn_desktop.services.patches import parse_patch_spec

    specs = [parse_patch_spec(s) for s in args.patch]
    if not args.record:
        return specs
    try:
        specs, _ = record_for(_registry_root(args), specs, args.record)
    except RecordMismatchError as exc:
        raise UsageError(f"--record {args.record}: {exc}") from exc
    return specs

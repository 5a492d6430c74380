"""`fmn patches ...`, `fmn stack ...` and `fmn cache ...`: the registry from the terminal.

Every command
takes `--registry DIR` (default: `$FMN_REGISTRY`, else the platform's user data folder) and
most take `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fmn_desktop.cli.common import (
    MODEL_HELP,
    UsageError,
    check_out,
    fraction,
    interval,
    load_model,
    model_args,
    nonneg_float,
    nonneg_int,
    out_args,
    positive_int,
    readable,
    safe,
    strength,
)
from fmn_desktop.registry.records import REF_HELP


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument(
        "--registry",
        metavar="DIR",
        default=None,
        help="registry folder (default: $FMN_REGISTRY, else the user data folder)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _model_opts(p: argparse.ArgumentParser, positional: bool) -> None:
    model_args(p, positional=False)
    if positional:
        p.add_argument("model", nargs="?", default="default", help=MODEL_HELP)
    else:
        p.add_argument(
            "--model", default=None, help=MODEL_HELP + " (needed for other tools' files)"
        )


def add_parsers(sub) -> None:
    """Register `patches` and `stack` (with their sub-commands) on fmn's sub-parsers."""
    pp = sub.add_parser(
        "patches",
        help="the patch registry: list, show, import, export, rm, tag, search",
        description="Patches kept in the local registry (content-addressed files beside a "
        "SQLite database).",
    )
    ps = pp.add_subparsers(dest="patches_command", required=True, metavar="ACTION")

    p = ps.add_parser("list", help="list registered patches")
    _common(p)
    p.add_argument("--kind", choices=["forget", "correct"])
    p.add_argument("--tag")
    p.add_argument("--concept")
    p.set_defaults(handler=patches_list, torch_free=True)

    p = ps.add_parser("show", help="one patch in full")
    _common(p)
    p.add_argument("patch", help=REF_HELP)
    p.set_defaults(handler=patches_show, torch_free=True)

    p = ps.add_parser(
        "import",
        help="register patch files (ours, kohya LoRA, .diff, PEFT, ESD/UCE absolute weights)",
        description="Register patch files. Files made by fmn need no model: they are checked "
        "completely without one (float tensors, ranks >= 1, finite values, names of a known "
        "family's UNet). Other tools' files are checked against --model (keys, shapes, base) "
        "and stored converted. A file that can never be applied is refused.",
    )
    _common(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    _model_opts(p, positional=False)
    p.add_argument("--name", help="registry name (default: from kind and concepts)")
    p.add_argument("--concept", action="append", help="concept the patch acts on (repeatable)")
    p.add_argument("--kind", choices=["forget", "correct"], help="what the patch does")
    p.add_argument("--tag", action="append", default=[], help="tag (repeatable)")
    p.add_argument("--notes", default="")
    p.add_argument(
        "--force",
        action="store_true",
        help="accept a patch made for another base model than --model (needs --model)",
    )
    p.add_argument(
        "--unet-only", action="store_true", help="drop a LoRA's text-encoder tensors (else refused)"
    )
    p.set_defaults(handler=patches_import)

    p = ps.add_parser("export", help="write a registered patch to a file")
    _common(p)
    p.add_argument("patch", help=REF_HELP)
    out_args(p, "file to write (.safetensors)")
    p.add_argument("--format", choices=["original", "lora", "diff"], default="original")
    p.add_argument(
        "--rank", type=positive_int, help="LoRA rank (default: smallest within --max-error)"
    )
    p.add_argument("--max-error", type=fraction, default=None, help="relative error bound (0.01)")
    p.set_defaults(handler=patches_export)

    p = ps.add_parser("rm", help="delete a patch (refused if a stack uses it)")
    _common(p)
    p.add_argument("patch", help=REF_HELP)
    p.add_argument("--cascade", action="store_true", help="also take it out of its stacks")
    p.set_defaults(handler=patches_rm, torch_free=True)

    p = ps.add_parser("tag", help="add (or --remove) tags")
    _common(p)
    p.add_argument("patch", help=REF_HELP)
    p.add_argument("tags", nargs="+", metavar="TAG")
    p.add_argument("--remove", action="store_true", help="remove these tags instead")
    p.set_defaults(handler=patches_tag, torch_free=True)

    p = ps.add_parser(
        "search",
        help="find patches by name, concept, concept kind, tag, note or file name",
        description="Patches matching every word: in the name, title, concepts, tags or "
        "notes (a word's start is enough: 'cast' finds 'castle'), or in what the patch is: "
        "forget/correct, lora/diff, the concept's kind (identity, object, style; on the "
        "embedded model also colour, unsafe) and the name of the file it was imported from.",
        epilog="example: fmn patches search zorbu identity",
    )
    _common(p)
    p.add_argument("query", nargs="+", metavar="WORD")
    p.set_defaults(handler=patches_search, torch_free=True)

    sp = sub.add_parser(
        "stack",
        help="stacks of patches: create, add, remove, show, apply, export",
        description="Ordered, named lists of registered patches with strengths, composed "
        "additively or by closed-form fusion of the attn2 K/V changes.",
    )
    ss = sp.add_subparsers(dest="stack_command", required=True, metavar="ACTION")

    p = ss.add_parser("create", help="a new, empty stack")
    _common(p)
    p.add_argument("name")
    p.add_argument("--mode", choices=["additive", "fused"], default="additive")
    p.add_argument("--notes", default="")
    p.set_defaults(handler=stack_create, torch_free=True)

    p = ss.add_parser("list", help="all stacks")
    _common(p)
    p.set_defaults(handler=stack_list, torch_free=True)

    p = ss.add_parser("add", help="add a patch (or change its strength)")
    _common(p)
    p.add_argument("stack")
    p.add_argument("patch", help=REF_HELP)
    p.add_argument(
        "--strength",
        type=strength,
        default=1.0,
        help="negative reverses; at most 100 either way (default 1, the strength the scores "
        "are for: above it a patch costs more, see docs/research/CONCEPTBENCH.md)",
    )
    p.add_argument("--position", type=nonneg_int, default=None, help="insert here (default: end)")
    p.set_defaults(handler=stack_add)

    p = ss.add_parser("remove", help="take a patch out of a stack")
    _common(p)
    p.add_argument("stack")
    p.add_argument("patch", help=REF_HELP)
    p.set_defaults(handler=stack_remove)

    p = ss.add_parser("delete", help="delete a stack (its patches stay registered)")
    _common(p)
    p.add_argument("stack")
    p.set_defaults(handler=stack_delete, torch_free=True)

    p = ss.add_parser("show", help="a stack's patches and its conflicts")
    _common(p)
    p.add_argument("stack")
    p.set_defaults(handler=stack_show)

    for action, helptext in (
        ("apply", "write the model with the stack applied (folder or .safetensors)"),
        ("export", "write the stack as one LoRA, .diff, diffusers folder or single file"),
    ):
        p = ss.add_parser(action, help=helptext)
        _common(p)
        p.add_argument("stack")
        _model_opts(p, positional=True)
        out_args(p, "a .safetensors file, or a folder for --format diffusers")
        p.add_argument("--mode", choices=["additive", "fused"], help="override the stack's mode")
        p.add_argument(
            "--preserve-weight",
            type=nonneg_float,
            default=None,
            help="fused mode: weight of the preservation prompts (default 1)",
        )
        p.add_argument("--force", action="store_true", help="apply despite conflicts")
        if action == "export":
            p.add_argument(
                "--format", choices=["lora", "diff", "diffusers", "single-file"], default="lora"
            )
            p.add_argument("--rank", type=positive_int, help="LoRA rank (default: by --max-error)")
            p.add_argument(
                "--max-error",
                type=fraction,
                default=None,
                help="LoRA: smallest rank within this relative error (default 0.01)",
            )
            p.add_argument(
                "--register", action="store_true", help="add the LoRA/.diff to the registry"
            )
            p.set_defaults(handler=stack_export)
        else:
            p.set_defaults(handler=stack_apply)

    cp = sub.add_parser(
        "cache",
        help="the registry's cache of reference images: info, clear",
        description="Jobs that draw reference images with the model (forget, erase-broad, "
        "disentangle, bench, demo) keep their latents in <registry>/cache/references and "
        "reuse them when the model, prompt, seed and sampler settings are the same; the "
        "patch is the same either way. `--no-cache` on a job bypasses it.",
    )
    cs = cp.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = cs.add_parser("info", help="where the cache is, how many latents, their size")
    _common(p)
    p.set_defaults(handler=cache_info)
    p = cs.add_parser("clear", help="remove every cached reference latent")
    _common(p)
    p.set_defaults(handler=cache_clear)


# ----------------------------------------------------------------------------- output
def _open(args):
    from fmn_desktop.registry import open_registry

    return open_registry(args.registry)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], max_width: int = 40) -> str:
    """A plain-text table: left-aligned text, right-aligned numbers, long cells cut with '…'."""

    def cell(v) -> str:
        s = f"{v:g}" if isinstance(v, float) else safe(v)
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        for i in range(len(headers))
    ]

    def fmt(values) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in cells]
    return "\n".join(lines)


def _patch_rows(records) -> list[list[object]]:
    return [
        [
            r.id,
            r.name,
            r.kind,
            ", ".join(r.concepts) or "-",
            r.format,
            r.base_fingerprint[:12] or "-",
            f"{r.size / 1024:.1f}K",
            ", ".join(r.tags) or "-",
        ]
        for r in records
    ]


PATCH_HEADERS = ["id", "name", "kind", "concepts", "format", "base", "size", "tags"]


def _print_patches(records, as_json: bool, empty: str) -> None:
    if as_json:
        _print_json([r.as_dict() for r in records])
    elif not records:
        print(empty)
    else:
        print(table(_patch_rows(records), PATCH_HEADERS))


# ----------------------------------------------------------------------------- patches
def patches_list(args) -> int:
    with _open(args) as reg:
        recs = reg.list_patches(kind=args.kind, tag=args.tag, concept=args.concept)
        _print_patches(recs, args.json, "no patches registered (fmn patches import FILE)")
    return 0


def patches_show(args) -> int:
    with _open(args) as reg:
        rec = reg.get_patch(args.patch)
        stacks = reg.stacks_using(rec.id)
        evals = reg.evaluations(patch=rec.id)
    if args.json:
        d = rec.as_dict()
        d["stacks"] = stacks
        d["evaluations"] = [e.__dict__ for e in evals]
        _print_json(d)
        return 0
    rows = [
        ("id", rec.id),
        ("name", rec.name),
        ("title", rec.title or "-"),
        ("kind", f"{rec.kind} ({rec.method})"),
        ("concepts", ", ".join(rec.concepts) or "-"),
        ("format", rec.format),
        ("family", rec.family or "-"),
        ("base model", rec.base_fingerprint or "-"),
        ("sha256", rec.sha256),
        ("size", f"{rec.size / 1024:.1f} KiB"),
        ("created", rec.created or "-"),
        ("added", rec.added),
        ("source", rec.source or "-"),
        ("tags", ", ".join(rec.tags) or "-"),
        ("notes", rec.notes or "-"),
        ("stacks", ", ".join(stacks) or "-"),
        ("file", rec.path),
    ]
    rows += [(f"  {k}", readable(v)) for k, v in sorted(rec.hyperparameters.items())]
    rows += [(f"score {k}", readable(v)) for k, v in sorted(rec.scores.items())]
    rows += [
        (
            f"eval {e.metric}" + (f" {e.concept}" if e.concept else ""),
            interval(e.value, e.low, e.high, e.n),
        )
        for e in evals
    ]
    rows = [(safe(k), safe(v)) for k, v in rows]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def patches_import(args) -> int:
    from fmn_desktop.services.library import import_file

    if args.force and not args.model:
        raise UsageError(
            "--force accepts a patch made for another base model than --model; give --model"
        )
    if args.name and len(args.files) > 1:
        raise UsageError("--name names one patch; import several files without it")
    model = None
    if args.model:
        model = load_model(args)
    out = []
    with _open(args) as reg:
        for f in args.files:
            res = import_file(
                reg,
                f,
                model,
                name=args.name,
                concepts=args.concept,
                kind=args.kind,
                tags=args.tag,
                notes=args.notes,
                force=args.force,
                unet_only=args.unet_only,
            )
            out.append(res)
    if args.json:
        _print_json(
            [
                dict(
                    res.record.as_dict(),
                    new=res.new,
                    source_format=res.source_format,
                    import_notes=res.notes,
                )
                for res in out
            ]
        )
        return 0
    for res in out:
        what = "imported" if res.new else "already registered"
        extra = f" [{'; '.join(res.notes)}]" if res.notes else ""
        print(safe(f"{what}: #{res.record.id} {res.record.name} ({res.source_format}){extra}"))
    return 0


def patches_export(args) -> int:
    from fmn_desktop.services.library import export_patch

    with _open(args) as reg:
        path, err = export_patch(
            reg, args.patch, args.out, args.format, args.rank, args.max_error, args.overwrite
        )
    if args.json:
        _print_json({"path": str(path), "lora_relative_error": err})
    else:
        print(f"wrote {path}" + (f" (LoRA relative error {err:.4f})" if err is not None else ""))
    return 0


def patches_rm(args) -> int:
    with _open(args) as reg:
        rec = reg.remove_patch(args.patch, cascade=args.cascade)
        reg.gc()
    if args.json:
        _print_json({"removed": rec.as_dict()})
    else:
        print(safe(f"removed #{rec.id} {rec.name}"))
    return 0


def patches_tag(args) -> int:
    with _open(args) as reg:
        if args.remove:
            rec = reg.tag(args.patch, remove=args.tags)
        else:
            rec = reg.tag(args.patch, add=args.tags)
    if args.json:
        _print_json(rec.as_dict())
    else:
        print(safe(f"#{rec.id} {rec.name}: tags {', '.join(rec.tags) or '(none)'}"))
    return 0


def patches_search(args) -> int:
    with _open(args) as reg:
        query = " ".join(args.query)
        _print_patches(reg.search(query), args.json, safe(f"nothing matches {query!r}"))
    return 0


# ----------------------------------------------------------------------------- stacks
def _stack_dict(rec, conflicts=None) -> dict:
    d = rec.as_dict()
    if conflicts is not None:
        d["conflicts"] = [c.__dict__ for c in conflicts]
    return d


def _print_stack(rec, conflicts=None) -> None:
    print(
        safe(
            f"stack {rec.name!r} ({rec.mode}, {len(rec.items)} patch(es))"
            + (f": {rec.notes}" if rec.notes else "")
        )
    )
    if rec.items:
        rows = [
            [
                i.position,
                i.patch.name,
                float(i.strength),
                i.patch.kind,
                ", ".join(i.patch.concepts) or "-",
                i.patch.base_fingerprint[:12] or "-",
            ]
            for i in rec.items
        ]
        print(table(rows, ["#", "patch", "strength", "kind", "concepts", "base"]))
    for c in conflicts or []:
        print(safe(f"conflict ({c.kind}): {c.message}"))
    if rec.items and not conflicts:
        print("no conflicts")


def stack_create(args) -> int:
    with _open(args) as reg:
        rec = reg.create_stack(args.name, mode=args.mode, notes=args.notes)
    if args.json:
        _print_json(_stack_dict(rec))
    else:
        print(safe(f"created stack {rec.name!r} ({rec.mode})"))
    return 0


def stack_list(args) -> int:
    with _open(args) as reg:
        stacks = reg.list_stacks()
    if args.json:
        _print_json([_stack_dict(s) for s in stacks])
    elif not stacks:
        print("no stacks (fmn stack create NAME)")
    else:
        rows = [
            [s.name, s.mode, len(s.items), ", ".join(i.patch.name for i in s.items) or "-"]
            for s in stacks
        ]
        print(table(rows, ["stack", "mode", "patches", "members"]))
    return 0


def _show_after_change(args, rec, reg) -> int:
    from fmn_desktop.services.library import stack_conflicts

    conflicts = stack_conflicts(reg, rec.id) if rec.items else []
    if args.json:
        _print_json(_stack_dict(rec, conflicts))
    else:
        _print_stack(rec, conflicts)
    return 0


# What a strength above 1 cost where it was measured (docs/research/CONCEPTBENCH.md, "Single
# patches on held-out prompts"): the scores are for strength 1.
ABOVE_ONE = (
    "note: scores are for strength 1; above it a patch costs more than it forgets (measured: "
    "Zorbu's patch at 1.5 lost 3 more points of retention and 48 more points of the other "
    "words of its prompts, for no gain in forgetting)"
)


def stack_add(args) -> int:
    if abs(args.strength) > 1:
        print(ABOVE_ONE, file=sys.stderr)
    with _open(args) as reg:
        rec = reg.add_to_stack(
            args.stack, args.patch, strength=args.strength, position=args.position
        )
        return _show_after_change(args, rec, reg)


def stack_remove(args) -> int:
    with _open(args) as reg:
        rec = reg.remove_from_stack(args.stack, args.patch)
        return _show_after_change(args, rec, reg)


def stack_delete(args) -> int:
    with _open(args) as reg:
        rec = reg.get_stack(args.stack)
        reg.delete_stack(rec.id)
    if args.json:
        _print_json({"deleted": rec.name})
    else:
        print(safe(f"deleted stack {rec.name!r} ({len(rec.items)} patch(es) stay registered)"))
    return 0


def stack_show(args) -> int:
    with _open(args) as reg:
        rec = reg.get_stack(args.stack)
        return _show_after_change(args, rec, reg)


def _print_conflicts_forced(conflicts) -> None:
    for c in conflicts:
        print(safe(f"warning: conflict ({c.kind}): {c.message}"), file=sys.stderr)


def stack_apply(args) -> int:
    from fmn_desktop.services.library import apply_registry_stack

    check_out(args.out, args.overwrite, model=True)
    model = load_model(args)
    with _open(args) as reg:
        res = apply_registry_stack(
            reg,
            args.stack,
            model,
            args.out,
            mode=args.mode,
            preserve_weight=args.preserve_weight,
            force=args.force,
            overwrite=args.overwrite,
        )
    _print_conflicts_forced(res.conflicts)
    if args.json:
        _print_json({"path": str(res.path), "format": res.format})
    else:
        print(f"wrote {res.path}")
    return 0


def stack_export(args) -> int:
    from fmn_desktop.services.library import check_export_out, export_registry_stack

    check_export_out(args.out, args.format, args.overwrite)
    model = load_model(args)
    with _open(args) as reg:
        res, added = export_registry_stack(
            reg,
            args.stack,
            model,
            args.out,
            args.format,
            mode=args.mode,
            rank=args.rank,
            max_rel_error=args.max_error,
            preserve_weight=args.preserve_weight,
            force=args.force,
            register=args.register,
            overwrite=args.overwrite,
        )
    _print_conflicts_forced(res.conflicts)
    if args.json:
        _print_json(
            {
                "path": str(res.path),
                "format": res.format,
                "rank": res.rank,
                "lora_relative_error": res.lora_error,
                "registered": added.as_dict() if added else None,
            }
        )
        return 0
    extra = (
        f" (LoRA rank {res.rank}, relative error {res.lora_error:.4f})"
        if res.lora_error is not None
        else ""
    )
    print(
        f"wrote {res.path}{extra}"
        + (safe(f"; registered as #{added.id} {added.name}") if added else "")
    )
    return 0


# ----------------------------------------------------------------------------- cache
def _print_cache(info, as_json: bool, verb: str) -> None:
    if as_json:
        _print_json({"folder": str(info.folder), "files": info.files, "bytes": info.bytes})
        return
    print(
        safe(
            f"{verb}{info.files} reference latent{'s' if info.files != 1 else ''} "
            f"({info.bytes / 2**20:.1f} MiB) in {info.folder}"
        )
    )


def cache_info(args) -> int:
    from fmn_desktop.services.cache import cache_info as info

    _print_cache(info(args.registry), args.json, "")
    return 0


def cache_clear(args) -> int:
    from fmn_desktop.services.cache import clear_cache

    _print_cache(clear_cache(args.registry), args.json, "removed ")
    return 0

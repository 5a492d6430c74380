"""Stacks of ConceptBench patches on the embedded model, scored on held-out prompts.

Forget each of ten ConceptBench items of mixed kinds (identities, objects, styles, the unsafe
words) with the default settings, one patch each, then score with `fmn evaluate`'s instrument
(`evaluate.patch_scores`: prompts and seeds no job trained on, every colour, style, unsafe word
and slot the concept combines with):

- each patch alone (`--singles`), and the first two at other strengths (`--strengths`);
- the stacks of the first 5 and of all 10, additive and fused.

For every state: each forgotten concept's M-Score, the co-attribute retention (other words of
its prompts still drawn), retention of prompts naming no forgotten concept, and the worst
neighbour drop, with 95% intervals, beside the bars a stack must meet (M-Score <= 0.1, retention
within 3 points of the base model, co-attributes within 5, no neighbour losing more than 10
points). Also the conflict check's verdict on each stack. Patches are kept in `--out-dir` and
reused by a rerun (`--fresh` forgets again).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/stack_bench.py --out-dir runs/stacks --singles

Writes stacks.json and stacks.md (the tables of docs/research/CONCEPTBENCH.md) to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# (item name, concepts forgotten together, forget-template kind); the first five are the
# stack a user reported losing the rest of the model with.
ITEMS = [
    ("Zorbu", ["Zorbu"], "identity"),
    ("Quilla", ["Quilla"], "identity"),
    ("circle", ["circle"], "object"),
    ("crescent", ["crescent"], "object"),
    ("stripes", ["stripes"], "style"),
    ("Tessik", ["Tessik"], "identity"),
    ("triangle", ["triangle"], "object"),
    ("checkers", ["checkers"], "style"),
    ("unsafe", ["cursed", "toxic", "hexed"], "unsafe"),
    ("ring", ["ring"], "object"),
]

BARS = {"mscore": 0.1, "retention_points": 3.0, "coattr_points": 5.0, "neighbour_points": 10.0}


def forget_item(model, concepts: list[str], kind: str, steps: int | None):
    """One ConceptBench item forgotten with the embedded model's defaults."""
    from fmn_desktop.resteer import ForgetConfig, forget
    from fmn_desktop.services.defaults import KIND_TEMPLATES, toy_defaults

    kw = {} if steps is None else {"steps": steps}
    config = toy_defaults(
        ForgetConfig(concepts=list(concepts), concept_kind=KIND_TEMPLATES[kind], **kw)
    )
    return forget(model.pipe, config, fingerprint=model.fingerprint or "", family=model.family)


def patches(model, out_dir: Path, fresh: bool, steps: int | None, log) -> list:
    """The ten items' patches: read from `out_dir`, else forgotten and written there."""
    from fmn_desktop.patch import load_patch, unet_module_names
    from fmn_desktop.patch.format import save_patch
    from fmn_desktop.patch.stack import StackEntry

    names = unet_module_names(model.pipe.unet)
    entries = []
    for name, concepts, kind in ITEMS:
        path = out_dir / f"forget-{name}.safetensors"
        if path.exists() and not fresh:
            patch = load_patch(path, names)
        else:
            t0 = time.perf_counter()
            patch = forget_item(model, concepts, kind, steps).patch
            save_patch(patch, path)
            log(f"forgot {name} in {time.perf_counter() - t0:.1f} s")
        entries.append(StackEntry(patch, 1.0, name))
    return entries


def verdict(scores: dict) -> dict:
    """Which of the stack bars the scores meet (points: percentage points vs the base)."""

    def drop(before: dict, after: dict) -> float:
        return 100 * (before["mean"] - after["mean"])

    worst_m = max(s["mscore_after"]["mean"] for s in scores["concepts"].values())
    ret = drop(scores["retention_before"], scores["retention_after"])
    coattr = drop(scores["coattr_before"], scores["coattr_after"])
    neighbour = 100 * scores["worst_neighbour_drop"]
    return {
        "worst_mscore": round(worst_m, 4),
        "retention_drop_points": round(ret, 2),
        "coattr_drop_points": round(coattr, 2),
        "worst_neighbour_points": round(neighbour, 1),
        "worst_neighbour": scores["worst_neighbour"],
        "meets": {
            "mscore": worst_m <= BARS["mscore"],
            "retention": ret <= BARS["retention_points"],
            "coattr": coattr <= BARS["coattr_points"],
            "neighbour": neighbour <= BARS["neighbour_points"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="runs/stacks")
    p.add_argument("--sizes", type=int, nargs="*", default=[5, 10], help="stack sizes (none: 0)")
    p.add_argument("--modes", nargs="+", default=["additive", "fused"])
    p.add_argument(
        "--singles",
        nargs="*",
        default=None,
        metavar="ITEM",
        help="also score these items' patches alone (no names: every item)",
    )
    p.add_argument(
        "--strengths", type=float, nargs="*", default=[], help="the first two items at these"
    )
    p.add_argument("--prompts", type=int, default=24, help="held-out prompts per concept")
    p.add_argument("--seeds", type=int, default=2, help="seeds per forgotten concept's prompt")
    p.add_argument("--neighbour-prompts", type=int, default=6)
    p.add_argument("--other-seeds", type=int, default=2)
    p.add_argument("--forget-steps", type=int, default=None, help="default: the model's")
    p.add_argument("--fresh", action="store_true", help="forget again even if patches exist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="stacks", help="file name of the report (NAME.json/.md)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from fmn_desktop.evaluate.patch_scores import ScoringPlan, evaluate_patches
    from fmn_desktop.patch.stack import StackEntry, find_conflicts
    from fmn_desktop.services.evaluate import training_prompts
    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld import CONCEPTS, load_judge

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = open_model(None, device="cpu")
    judge = load_judge()
    plan = ScoringPlan(
        prompts=args.prompts,
        seeds=args.seeds,
        neighbour_prompts=args.neighbour_prompts,
        other_seeds=args.other_seeds,
    )
    entries = patches(model, out, args.fresh, args.forget_steps, log)
    concepts_of = {name: cs for name, cs, _ in ITEMS}
    cache: dict = {}
    results: dict = {"plan": plan.as_dict(), "bars": BARS, "states": {}}

    def score(label: str, chosen: list, mode: str = "additive") -> None:
        names = [c for e in chosen for c in concepts_of[e.name]]
        t0 = time.perf_counter()
        scores = evaluate_patches(
            model,
            chosen,
            [CONCEPTS[n] for n in names],
            plan,
            exclude=training_prompts(model, names),
            mode=mode,
            force=True,  # the conflict check's verdict is recorded, not enforced
            judge=judge,
            cache=cache,
        )
        conflicts = [c.message for c in find_conflicts(chosen, model.fingerprint)]
        row = {"scores": scores, "verdict": verdict(scores), "conflicts": conflicts}
        results["states"][label] = row
        v = row["verdict"]
        log(
            f"{label}: worst M-Score {v['worst_mscore']:.3f}, retention "
            f"{-v['retention_drop_points']:+.1f} pts, co-attributes {-v['coattr_drop_points']:+.1f}"
            f" pts, worst neighbour {v['worst_neighbour']} -{v['worst_neighbour_points']:.0f} pts"
            f" ({time.perf_counter() - t0:.0f} s)"
        )
        (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))

    if args.singles is not None:
        for e in entries:
            if not args.singles or e.name in args.singles:
                score(f"alone: {e.name}", [e])
    for e in entries[:2]:
        for s in args.strengths:
            score(f"{e.name} at {s:g}", [StackEntry(e.patch, s, e.name)])
    for n in args.sizes or ():
        for mode in args.modes:
            score(f"stack of {n}, {mode}", entries[:n], mode)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{args.name}.md").write_text(markdown(results))
    print((out / f"{args.name}.md").read_text())
    return 0


def _est(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(results: dict) -> str:
    """The summary table (one row per state) and, per stack, each concept's M-Score."""
    from fmn_desktop.wording import count

    plan = results["plan"]
    lines = [
        f"Held-out scoring: {count(plan['prompts'], 'prompt')} x {count(plan['seeds'], 'seed')} "
        f"per forgotten concept, {plan['neighbour_prompts']} x {plan['other_seeds']} per other "
        "concept, "
        f"{plan['steps']} sampler steps. Bars: M-Score <= {BARS['mscore']}, retention and "
        f"co-attributes within {BARS['retention_points']:g} / {BARS['coattr_points']:g} points "
        f"of the base, no neighbour losing more than {BARS['neighbour_points']:g} points.",
        "",
        "| state | worst M-Score | retention before -> after | co-attributes before -> after "
        "| worst neighbour (points) | bars met | conflicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in results["states"].items():
        s, v = row["scores"], row["verdict"]
        met = [k for k, ok in v["meets"].items() if ok]
        lines.append(
            f"| {label} | {v['worst_mscore']:.3f} | {_est(s['retention_before'])} -> "
            f"{_est(s['retention_after'])} | {_est(s['coattr_before'])} -> "
            f"{_est(s['coattr_after'])} | {v['worst_neighbour']} -{v['worst_neighbour_points']:.0f}"
            f" | {len(met)}/4 ({', '.join(met) or 'none'}) | {len(row['conflicts'])} |"
        )
    for label, row in results["states"].items():
        if not label.startswith("stack"):
            continue
        lines += [
            "",
            f"**{label}**: per concept",
            "",
            "| concept | M-Score after | co-attributes after | judge reads instead |",
            "|---|---|---|---|",
        ]
        for name, c in row["scores"]["concepts"].items():
            top = ", ".join(f"{k} {v:.0%}" for k, v in list(c["readings_after"].items())[:3])
            lines.append(
                f"| {name} | {_est(c['mscore_after'])} | {_est(c['coattr_after'])} | {top} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

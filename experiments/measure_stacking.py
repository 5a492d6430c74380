"""Measure what fused stacking buys on the embedded model.

Forget five concepts of the toy world as five separate patches (the default forget settings
of `fmn demo`), then stack them additively (``W0 + sum dW_i``) and fused (closed-form K/V
solve, ``fmn_desktop.patch.stack``), and report for each state the M-Score of every forgotten
concept and the retention of all the other concepts, with 95% intervals, from one fixed
evaluation set per state (same prompts and seeds). Optionally (`--singles`) each patch alone.

    .venv/bin/python experiments/measure_stacking.py --threads 1 --seeds 4 --out-dir runs/stacking

Preservation set for fusion: the toy text encoder knows only the world's words, so the shipped
(real-world) prompts mean nothing to it; prompts are composed from the world's vocabulary
without the forgotten concepts, in templates other than the evaluation ones ("a {colour}
{object} in the style of {style}", "{identity} in the style of {style}", ...).
Writes stacking.json and stacking.md to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def default_concepts() -> list[str]:
    """Five concepts across kinds: two objects, a colour, a style, an identity."""
    from fmn_desktop.toyworld import concepts_of_kind

    picks = concepts_of_kind("object")[:2] + concepts_of_kind("colour")[:1]
    picks += concepts_of_kind("style")[1:2] + concepts_of_kind("identity")[1:2]
    return [c.name for c in picks]


def toy_preservation_prompts(forgotten: list[str]) -> list[str]:
    """World-vocabulary prompts naming none of `forgotten`, in non-evaluation templates."""
    from fmn_desktop.evaluate.scores import names_concept
    from fmn_desktop.toyworld import concepts_of_kind

    def names(kind):
        return [c.name for c in concepts_of_kind(kind)]

    objects, colours, styles, people = (names(k) for k in ("object", "colour", "style", "identity"))
    prompts = [
        f"a {c} {o} in the style of {s}" for o in objects for c in colours[:2] for s in styles
    ]
    prompts += [f"{p} in the style of {s}" for p in people for s in styles]
    prompts += [f"a picture of a {c} {o}" for o in objects for c in colours]
    return [p for p in prompts if not any(names_concept(p, f) for f in forgotten)]


def measure(
    model,
    judge,
    concepts: list[str],
    settings,
    *,
    steps: int | None = None,
    preserve_weight: float = 1.0,
    singles: bool = False,
    evaluated=None,
    forget_overrides: dict | None = None,
    log=print,
) -> tuple[list, dict]:
    """Forget each concept, stack additively and fused, and score every state.
    Returns the stack entries (the five patches) and the results."""
    from fmn_desktop.evaluate.scores import generate_eval_set, mscore, retention
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.patch.stack import ComposeSettings, StackEntry, applied_stack, find_conflicts
    from fmn_desktop.resteer import forget
    from fmn_desktop.services.defaults import demo_config
    from fmn_desktop.toyworld import CONCEPTS

    pipe = model.pipe
    targets = [CONCEPTS[c] for c in concepts]
    evaluated = list(evaluated or CONCEPTS.values())
    entries, forget_s = [], {}
    for c in targets:
        t0 = time.perf_counter()
        config = demo_config(c, steps)
        for key, value in (forget_overrides or {}).items():
            setattr(config, key, value)
        result = forget(pipe, config, fingerprint=model.fingerprint or "", family=model.family)
        forget_s[c.name] = round(time.perf_counter() - t0, 2)
        entries.append(StackEntry(result.patch, 1.0, c.name))
        log(f"forgot {c.name!r} in {forget_s[c.name]} s")
    conflicts = [c.message for c in find_conflicts(entries, model.fingerprint)]
    states: dict[str, list] = {}
    t0 = time.perf_counter()
    states["base"] = generate_eval_set(pipe, judge, evaluated, settings)
    log(f"base evaluation set: {len(states['base'])} images in {time.perf_counter() - t0:.0f} s")
    if singles:
        for e in entries:
            with PatchedUNet(pipe.unet, [(e.patch, 1.0)], fingerprint=model.fingerprint):
                states[f"alone:{e.name}"] = generate_eval_set(pipe, judge, evaluated, settings)
            log(f"{e.name} alone: evaluated")
    preservation = toy_preservation_prompts(concepts)
    solve_s = {}
    for mode in ("additive", "fused"):
        cs = ComposeSettings(
            mode=mode, preserve_weight=preserve_weight, preservation_prompts=preservation
        )
        t0 = time.perf_counter()
        with applied_stack(model, entries, cs, force=True):
            solve_s[mode] = round(time.perf_counter() - t0, 3)
            states[mode] = generate_eval_set(pipe, judge, evaluated, settings)
        log(f"{mode} stack: evaluated (composition {solve_s[mode]} s)")
    table = {}
    for c in targets:
        row = {
            state: mscore(imgs, c).as_dict()
            for state, imgs in states.items()
            if not state.startswith("alone:")
        }
        if singles:
            row["alone"] = mscore(states[f"alone:{c.name}"], c).as_dict()
        table[c.name] = row
    ret = {state: retention(imgs, concepts).as_dict() for state, imgs in states.items()}
    return entries, {
        "concepts": concepts,
        "mscore": table,
        "retention_of_others": ret,
        "forget_seconds": forget_s,
        "composition_seconds": solve_s,
        "conflicts": conflicts,
        "settings": {
            "eval_seeds": settings.seeds,
            "sampler_steps": settings.steps,
            "cfg": settings.guidance,
            "forget_steps": demo_config(targets[0], steps).steps,
            "preserve_weight": preserve_weight,
            "preservation_prompts": len(preservation),
            "fingerprint": (model.fingerprint or "")[:12],
        },
    }


def record(reg, entries, result: dict, tmp_dir: Path) -> None:
    """Keep the five patches, both stacks and every score in a registry."""
    from fmn_desktop.patch import save_patch

    names = {}
    for e in entries:
        e.patch.meta.scores = {"mscore_alone": result["mscore"][e.name].get("alone")}
        path = save_patch(e.patch, tmp_dir / f"{e.name}.safetensors", "diff")
        rec = reg.add_patch(path, tags=["measure-stacking"])
        names[e.name] = rec.name
        for state in ("base", "alone"):
            est = result["mscore"][e.name].get(state)
            if est:
                reg.add_evaluation(
                    f"mscore_{state}",
                    est["mean"],
                    patch=rec.id,
                    concept=e.name,
                    low=est["low"],
                    high=est["high"],
                    n=est["n"],
                    settings=result["settings"],
                )
    for mode in ("additive", "fused"):
        stack = f"measure-{mode}"
        existing = {s.name for s in reg.list_stacks()}
        if stack in existing:
            reg.delete_stack(stack)
        reg.create_stack(stack, mode=mode, notes="experiments/measure_stacking.py")
        for e in entries:
            reg.add_to_stack(stack, names[e.name], strength=e.strength)
        for concept, row in result["mscore"].items():
            est = row[mode]
            reg.add_evaluation(
                "mscore",
                est["mean"],
                stack=stack,
                concept=concept,
                low=est["low"],
                high=est["high"],
                n=est["n"],
                settings=result["settings"],
            )
        est = result["retention_of_others"][mode]
        reg.add_evaluation(
            "retention",
            est["mean"],
            stack=stack,
            low=est["low"],
            high=est["high"],
            n=est["n"],
            settings=result["settings"],
        )


def _fmt(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(result: dict) -> str:
    singles = any("alone" in row for row in result["mscore"].values())
    cols = ["base"] + (["alone"] if singles else []) + ["additive", "fused"]
    lines = [
        "| forgotten concept | " + " | ".join(f"M-Score {c}" for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, row in result["mscore"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    ret = result["retention_of_others"]
    lines += [
        "",
        "| retention of all other concepts | base | additive | fused |",
        "|---|---|---|---|",
        "| judge accuracy | "
        + " | ".join(_fmt(ret[s]) for s in ("base", "additive", "fused"))
        + " |",
        "",
        "Settings: " + json.dumps(result["settings"], sort_keys=True),
    ]
    if result["conflicts"]:
        lines.append("Conflicts reported: " + "; ".join(result["conflicts"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concepts", nargs="+", default=None, help="five concepts (default: mixed)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per evaluation prompt")
    p.add_argument("--steps", type=int, default=None, help="forget steps (default: demo's)")
    p.add_argument("--sampler-steps", type=int, default=20, help="sampling steps per image")
    p.add_argument("--preserve-weight", type=float, default=1.0)
    p.add_argument("--singles", action="store_true", help="also score each patch alone")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="runs/stacking")
    p.add_argument("--registry", default=None, help="also keep patches, stacks and scores here")
    args = p.parse_args(argv)

    import fmn_desktop  # noqa: F401  (offline mode)
    from fmn_desktop.evaluate.scores import EvalSettings
    from fmn_desktop.runtime import set_threads
    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld import CONCEPTS, load_judge, weights_available

    set_threads(args.threads)
    if not weights_available():
        print("the embedded model's weights are not installed; nothing measured", file=sys.stderr)
        return 1
    concepts = args.concepts or default_concepts()
    unknown = [c for c in concepts if c not in CONCEPTS]
    if unknown:
        p.error(f"unknown concepts {unknown}; known: {', '.join(sorted(CONCEPTS))}")
    t0 = time.perf_counter()
    model = open_model("default")
    entries, result = measure(
        model,
        load_judge(),
        concepts,
        EvalSettings(seeds=args.seeds, steps=args.sampler_steps),
        steps=args.steps,
        preserve_weight=args.preserve_weight,
        singles=args.singles,
        log=lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", file=sys.stderr, flush=True),
    )
    result["settings"]["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stacking.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (out / "stacking.md").write_text(markdown(result))
    if args.registry:
        from fmn_desktop.registry import open_registry

        with open_registry(args.registry) as reg:
            record(reg, entries, result, out)
    print(markdown(result))
    print(f"wrote {out / 'stacking.json'} and {out / 'stacking.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

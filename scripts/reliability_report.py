"""Run the reliability checks and write their figures into docs/research/RELIABILITY.md.

    python scripts/reliability_report.py                       # 1,000 fuzz cases, 20 kills each
    python scripts/reliability_report.py --fuzz 300 --kills 5  # a quick run
    python scripts/reliability_report.py --out /tmp/r.md       # somewhere else

The checks are those of the slow tests (`tests/reliability_harness.py`), on a tiny model built
in code, all in this one process (killed and racing runs are forked from it):

- a fuzz corpus of generated hostile patch files, checkpoints and argument values through
  `fmn inspect`, `patches import`, `apply`, `generate` and `stack export`;
- `kill -9` at random moments of `patches import`, `apply` and `stack export`, then the
  registry's integrity, database against store, the target and temporary files;
- three processes importing the same and different files into one registry at once.

Exit status 1 when any check failed (the report is written either way).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "research" / "RELIABILITY.md"
sys.path.insert(0, str(ROOT / "tests"))  # the harness lives beside the tests that use it
sys.path.insert(0, str(ROOT))


def _fmt_counts(counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))


def build_report(args) -> tuple[str, bool]:
    os.environ.setdefault("FMN_THREADS", "1")
    import reliability_harness as h
    import torch

    from fmn_desktop.runtime import set_threads

    set_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fmn-reliability-") as tmp:
        world = h.make_world(Path(tmp) / "world")
        print("world ready", file=sys.stderr, flush=True)

        def log(text):
            print(text, file=sys.stderr, flush=True)

        cached = h.fuzz(
            world, n=args.fuzz, seed=args.seed, checkpoints=max(10, args.fuzz // 25), log=log
        )
        log(f"fuzz: {cached.summary()}")
        uncached = h.fuzz(
            world,
            n=args.fuzz_uncached,
            seed=args.seed + 1,
            checkpoints=max(5, args.fuzz_uncached // 8),
            cache=False,
        )
        log(f"fuzz without the model cache: {uncached.summary()}")
        kills = {}
        for command in ("import", "apply", "stack-export"):
            kills[command] = h.kill_runs(world, command, n=args.kills, seed=args.seed)
            log(
                f"kill {command}: {kills[command].runs} runs, {len(kills[command].failures)} "
                "failures"
            )
        race = h.concurrent_imports(world, rounds=args.race_rounds, procs=3)
        log(f"race: {race.rounds} rounds, {len(race.failures)} failures")
    seconds = time.perf_counter() - started

    fuzz_failures = cached.failures + uncached.failures
    kill_failures = [f for k in kills.values() for f in k.failures]
    ok = not fuzz_failures and not kill_failures and not race.failures
    cases = cached.cases + uncached.cases
    by_command = cached.by_command + uncached.by_command
    codes = cached.codes + uncached.codes
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{platform.python_version()}, torch {torch.__version__}, one torch thread"
    )
    lines = [
        "# Reliability: hostile input, killed processes, concurrent writers",
        "",
        "What `fmn` does with input meant to break it, and with processes that die mid-write.",
        "Produced by `scripts/reliability_report.py` (the same checks as the slow tests in",
        "`tests/cli/test_fuzz.py`, harness in `tests/reliability_harness.py`) on a tiny",
        "SD-layout model built in code: a LoRA and a `.diff` patch made for it, and a registry",
        "holding both in a stack. Everything ran in one process (killed and racing runs are",
        "forked from it).",
        "",
        f"Run {now} on {machine}; {seconds:.0f} s in all. Command: "
        f"`python scripts/reliability_report.py --fuzz {args.fuzz} --fuzz-uncached "
        f"{args.fuzz_uncached} --kills {args.kills} --race-rounds {args.race_rounds} "
        f"--seed {args.seed}`.",
        "",
        "## Hostile input",
        "",
        "Generated cases: damaged patch files (NaN/inf values, huge values whose product",
        "overflows, integer and bool tensors, wrong or zero ranks, missing factors, bad",
        "alphas, unknown and text-encoder keys, metadata of the wrong JSON type or with",
        "control characters, truncated, bit-flipped, pickled, empty, random bytes), damaged",
        "checkpoints (NaN weights, missing or misshapen tensors, damaged embedded configs,",
        "the byte damage above), and hostile argument values (strengths `nan`, `inf`,",
        "`1e309`, `1e308`, `101`; counts and sizes `0`, `-64`, `4104`, `1e3`; references and",
        "search text made of FTS syntax; output paths that are folders, files, too long or",
        "hold NUL), through `inspect`, `patches import` (with and without `--model`),",
        "`apply`, `generate` and `stack export` (also with strengths edited into the",
        "database behind its back). In the first set a model is loaded once and handed back",
        "with its base weights to every command; in the second every command loads its own.",
        "",
        "| | cases | by command | exit status | tracebacks | exit 0 with non-finite output "
        "| raw control characters on stdout | temporaries left |",
        "|---|---|---|---|---|---|---|---|",
        f"| model loaded once | {cached.cases} | {_fmt_counts(cached.by_command)} | "
        f"{_fmt_counts(cached.codes)} | {len(cached.tracebacks)} | "
        f"{len(cached.corrupt_outputs)} | {len(cached.raw_control)} | {len(cached.leftovers)} |",
        f"| every command loads | {uncached.cases} | {_fmt_counts(uncached.by_command)} | "
        f"{_fmt_counts(uncached.codes)} | {len(uncached.tracebacks)} | "
        f"{len(uncached.corrupt_outputs)} | {len(uncached.raw_control)} | "
        f"{len(uncached.leftovers)} |",
        f"| **all** | **{cases}** | {_fmt_counts(by_command)} | {_fmt_counts(codes)} | "
        f"**{len(cached.tracebacks) + len(uncached.tracebacks)}** | "
        f"**{len(cached.corrupt_outputs) + len(uncached.corrupt_outputs)}** | "
        f"{len(cached.raw_control) + len(uncached.raw_control)} | "
        f"{len(cached.leftovers) + len(uncached.leftovers)} |",
        "",
        'A traceback counts when an exception leaves `main()`, a traceback or an "internal',
        'error" is printed, or the exit status is not 0, 1 or 2. Exit 0 happens where a',
        "mutation leaves a usable file (a float64 or fp16 copy, control characters in a",
        "title, which are printed escaped) or an argument value is valid; every such output",
        "(a patched model, a stack export, a registered file) was read back and is finite.",
        "",
        "## Killed with SIGKILL at random moments",
        "",
        "Each run is killed at a random moment: half of them drawn uniformly over the length of",
        "an unkilled run, half over its second half, where it writes (some finish first, some",
        "die while loading). After each: `PRAGMA integrity_check`, every registered row has",
        "its whole file, the registry's next open (which marks dead processes' jobs",
        '"interrupted" and removes their temporaries), database against store after',
        "`gc`, the target file (absent or whole and finite) and temporary files after the",
        "next start.",
        "",
        "| command | runs | killed before finishing | registry intact | target absent / whole "
        "| temporaries the kill left | temporaries after the next start | unreferenced store files "
        "(removed by gc) | jobs marked interrupted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for command, k in kills.items():
        target = "-" if command == "import" else f"{k.targets_absent} / {k.targets_whole}"
        lines.append(
            f"| `{command}` | {k.runs} | {k.killed} | {k.integrity_ok} of {k.runs} | {target} | "
            f"{k.temporaries_left_by_kill} | {k.temporaries_after_start} | "
            f"{k.unreferenced_files} | {k.interrupted_jobs} |"
        )
    lines += [
        "",
        "## Concurrent importers",
        "",
        f"{race.rounds} rounds of {race.processes // max(1, race.rounds)} processes started at "
        "once, each importing one file they share and one of its own into one fresh",
        "registry (half of them the shared file first).",
        "",
        "| rounds | processes | failures (exit not 0, SQL error text, row lost or doubled) "
        "| rounds where exactly one process reported the shared file imported |",
        "|---|---|---|---|",
        f"| {race.rounds} | {race.processes} | {len(race.failures)} | "
        f"{race.imported_same_once} of {race.rounds} |",
        "",
        "## What is checked where",
        "",
        "- every value that reaches a weight is finite: patch tensors, LoRA alphas and the",
        "  up x down product (`patch/validate.py`), strengths within +-100 (`limits.py`),",
        "  patched weights in their own dtype (`patch/apply.py`), fused solutions",
        "  (`patch/stack.py`), and whatever is written (`patch.format.patch_bytes`,",
        "  `models.export.check_finite`);",
        "- temporary files are named `.fmn-tmp-<pid>-<random>-<target>`, removed on failure",
        "  and on SIGTERM, and swept when a later write into the folder or the registry's",
        "  open finds their writer gone (`fileio.py`);",
        "- duplicate imports are settled inside the registry's write transaction, jobs record",
        "  their pid and host (`registry/repository.py`).",
        "",
    ]
    if not ok:
        lines += ["## Failures", ""]
        lines += [
            f"- {f.splitlines()[0][:300]}"
            for f in (fuzz_failures + kill_failures + race.failures)[:30]
        ]
        lines.append("")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fuzz", type=int, default=1000, help="fuzz cases with the model loaded once")
    p.add_argument(
        "--fuzz-uncached",
        type=int,
        default=100,
        help="fuzz cases where every command loads the model",
    )
    p.add_argument("--kills", type=int, default=20, help="killed runs per command")
    p.add_argument("--race-rounds", type=int, default=5, help="rounds of three importers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    text, ok = build_report(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}" + ("" if ok else " (with failures)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""What every `fmn` command shares: model options, loading, errors, progress on stderr,
argument types that refuse bad numbers up front, and `safe` for printing text that came
from files (names, metadata) without letting it drive the terminal."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys

from fmn_desktop.errors import FmnError

MODEL_HELP = (
    "a diffusers folder or an LDM/A1111 single-file .safetensors (SD1.x, SD2.x, SDXL); "
    "'default' (the default) is the embedded toy model"
)


class UsageError(FmnError):
    """Bad combination of arguments: exit status 2."""


# ----------------------------------------------------------------------------- printing
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def safe(value: object) -> str:
    """`str(value)` with control characters (ESC, BEL, CR, NUL, newlines, C1 controls,
    bidirectional overrides) written as escapes: text from a file is shown, never obeyed,
    and always stays on its line."""
    return _CONTROL.sub(_escape, str(value))


# ----------------------------------------------------------------------------- readable values
SHOWN_ITEMS = 3  # a long list shows its count and this many items (--json has them all)
ITEM_WIDTH = 40


def interval(mean: float, low: float | None, high: float | None, n: int | None = None) -> str:
    """ "0.031 [0.010, 0.052]" (an estimate with its 95% interval), ", n=12" with a count."""
    text = f"{mean:.3f}"
    if low is not None and high is not None:
        text += f" [{low:.3f}, {high:.3f}]"
    return text + (f", n={n}" if n is not None else "")


def readable(value: object) -> str:
    """A metadata value (hyper-parameter, score) for a person: estimates as intervals,
    floats to 4 significant digits, long lists as their count and first items, text without
    JSON quotes. One line; `safe` still applies to what came from a file."""
    if isinstance(value, dict):
        if {"mean", "low", "high"} <= set(value) and all(
            isinstance(value[k], (int, float)) for k in ("mean", "low", "high")
        ):
            n = value.get("n")
            return interval(
                value["mean"], value["low"], value["high"], n if isinstance(n, int) else None
            )
        return "{" + ", ".join(f"{k}: {readable(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        if len(value) <= SHOWN_ITEMS:
            return ", ".join(_item(v) for v in value) or "(none)"
        shown = ", ".join(_item(v) for v in value[:SHOWN_ITEMS])
        return f"{len(value)}: {shown}, … ({len(value) - SHOWN_ITEMS} more)"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if value != "" else '""'


def _item(value: object) -> str:
    text = readable(value)
    if len(text) > ITEM_WIDTH:
        text = text[: ITEM_WIDTH - 1] + "…"
    return f'"{text}"' if isinstance(value, str) else text


# ----------------------------------------------------------------------------- argument types
MAX_SIZE = 4096  # image side in pixels
MAX_COUNT = 1_000_000  # steps, seeds, references, ...


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number from 1 to MAX_COUNT."""
    v = _int(text)
    if not 1 <= v <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{v} is out of range (1 to {MAX_COUNT:,})")
    return v


def nonneg_int(text: str) -> int:
    """argparse type: a whole number from 0 to MAX_COUNT."""
    v = _int(text)
    if not 0 <= v <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{v} is out of range (0 to {MAX_COUNT:,})")
    return v


def image_count(text: str) -> int:
    """argparse type: images per prompt in a grid, 1 to 256."""
    v = _int(text)
    if not 1 <= v <= 256:
        raise argparse.ArgumentTypeError(f"{v} is out of range (1 to 256)")
    return v


def thread_count(text: str) -> int:
    """argparse type: CPU threads, 1 to 256."""
    v = _int(text)
    if not 1 <= v <= 256:
        raise argparse.ArgumentTypeError(f"{v} is out of range (1 to 256)")
    return v


def seed_int(text: str) -> int:
    """argparse type: a seed (0 to 2**63 - 1)."""
    v = _int(text)
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"{v} is not a seed (0 to 2**63 - 1)")
    return v


def image_size(text: str) -> int:
    """argparse type: an image side in pixels, a multiple of 8 from 8 to MAX_SIZE."""
    v = _int(text)
    if not 8 <= v <= MAX_SIZE or v % 8:
        raise argparse.ArgumentTypeError(f"{v} is no image size (a multiple of 8, 8 to {MAX_SIZE})")
    return v


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan, inf, or overflow like 1e309)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return v


def fraction(text: str) -> float:
    """argparse type: a finite number from 0 to 1."""
    v = finite_float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 1")
    return v


def strength(text: str) -> float:
    """argparse type: a patch strength (finite, at most MAX_STRENGTH either way)."""
    from fmn_desktop.limits import strength_problem

    v = finite_float(text)
    problem = strength_problem(v)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return v


def patch_spec(text: str):
    """argparse type: PATH[:STRENGTH] (`services.patches.parse_patch_spec`)."""
    from fmn_desktop.services.patches import parse_patch_spec

    try:
        return parse_patch_spec(text)
    except FmnError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def out_args(p: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """`--out` and `--overwrite` (an existing output is replaced only with the latter)."""
    p.add_argument("--out", required=required, help=help)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (else an existing file or folder is refused)",
    )


def check_out(path, overwrite: bool, model: bool = False) -> None:
    """Refuse a bad --out before any work (services.output); a model's is a file or folder.
    A folder given for a file, or an existing output without --overwrite, is a usage error."""
    from fmn_desktop.services.output import (
        OutputPathError,
        check_output_file,
        check_output_model,
    )

    if path is not None:
        try:
            (check_output_model if model else check_output_file)(path, overwrite)
        except OutputPathError as exc:
            raise UsageError(str(exc)) from None


def stack_mode_arg(p: argparse.ArgumentParser, default: str | None = "additive") -> None:
    """`--stack-mode`: how several patches compose, as a stack does (one way everywhere)."""
    p.add_argument(
        "--stack-mode",
        choices=("additive", "fused"),
        default=default,
        help="how several patches compose, as a stack does: additive (sum of the changes) or "
        "fused (one closed-form solve that keeps each concept's change and the rest of the "
        "model); conflicting patches are refused unless --force (default: "
        + (default or "additive, or the registry stack's mode")
        + ")",
    )


def model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
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
    p.add_argument(
        "--device", default="auto", help="auto, cpu or cuda[:N] (default: cuda if available)"
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="weights dtype (default: fp32 on the CPU, fp16 on CUDA; fp16/bf16 on the CPU "
        "are slow, for checking the half-precision path)",
    )


def registry_arg(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument(
        "--registry",
        metavar="DIR",
        default=None,
        help=f"registry folder{what} (default: $FMN_REGISTRY, else the user data folder)",
    )


def forget_default(name: str):
    """A ForgetConfig field's default: the CLI shows and uses the library's own defaults."""
    from fmn_desktop.resteer import ForgetConfig

    return ForgetConfig.__dataclass_fields__[name].default


def load_model(args):
    """The model of `args.model` with the device/precision policy of every front end."""
    from fmn_desktop.services.model import half_on_cpu_note, open_model

    with status(f"loading {args.model}"):
        # An explicit --dtype fp16/bf16 on the CPU runs (slowly), to check the half path.
        model = open_model(
            args.model,
            device=args.device,
            precision=args.dtype,
            family=args.family,
            prediction_type=args.prediction_type,
            config=args.config,
            half_on_cpu=True,
        )
    note = half_on_cpu_note(model.device, model.dtype)
    if note:
        print(note, file=sys.stderr)
    return model


class status:
    """A one-line status on stderr for short waits."""

    def __init__(self, text: str):
        self.text = text

    def __enter__(self):
        print(f"{self.text} ...", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        return False


def step_bar(total: int, verb: str):
    """A progress bar on stderr and the callback that feeds it from a training job's progress
    items ("references" counting the reference images drawn, then one "train" item per step;
    other phases, e.g. "attack", only name themselves)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=verb, unit="step", file=sys.stderr)
    state = {"phase": verb}

    def restart(desc: str, count: int, unit: str) -> None:
        if state["phase"] != desc:  # a new phase counts from 0 in its own unit
            state["phase"] = desc
            bar.set_description(desc)
            bar.unit = unit
            bar.set_postfix_str("")
            bar.reset(total=count)

    def progress(p):
        if p.phase == "references" and p.total:
            restart("reference images", p.total, "image")
            bar.update(p.step - bar.n)
            return
        if p.phase != "train":  # "attack": no count of its own
            state["phase"] = p.phase
            bar.set_description(p.phase)
            return
        restart(verb, p.total, "step")
        bar.total = p.total  # fast mode counts (layer, step) pairs
        bar.update(p.step - bar.n)
        if p.loss is not None:
            bar.set_postfix(loss=f"{p.loss:.4f}")

    return bar, progress


def cache_args(p: argparse.ArgumentParser, registry: bool = True) -> None:
    """`--no-cache` (and `--registry` where the command has none): where reference latents
    are reused from and kept."""
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="draw the reference images afresh and keep none (default: reuse those an earlier "
        "job drew with the same model and settings, kept in the registry's cache folder)",
    )
    if registry:
        registry_arg(p, " whose cache holds the reference images")


def reference_cache_root(args) -> str | None:
    """The registry folder whose reference cache a job uses; None with `--no-cache`."""
    from fmn_desktop.registry.location import registry_dir

    return None if args.no_cache else str(registry_dir(getattr(args, "registry", None)))


def phase_printer(progress=None):
    """A progress callback that prints a job's own reports (a text, no loss) on stderr and
    passes training steps to `progress`."""

    def report(value):
        if value.text and value.loss is None:
            print(f"{value.text} ...", file=sys.stderr, flush=True)
        elif progress is not None:
            progress(value)

    return report


def count_bar(unit: str):
    """A progress callback for a job that counts its work (`step` of `total`, e.g. images):
    a bar on stderr, described by the report's text; reports that count nothing print
    their text as a line. Returns (callback, close)."""
    bar = None

    def report(p):
        nonlocal bar
        if p.total:
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=p.total, unit=unit, file=sys.stderr)
            if p.text:
                bar.set_description(p.text)
            bar.total = p.total
            bar.update(p.step - bar.n)
        elif p.text:
            if bar is not None:
                bar.write(f"{p.text} ...", file=sys.stderr)
            else:
                print(f"{p.text} ...", file=sys.stderr, flush=True)

    def close():
        if bar is not None:
            bar.close()

    return report, close


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _value_type(field):
    """The argparse type of a config field, from its annotation ("int | None" -> int) and
    its knob's bounds: numbers are checked finite and in range before any work."""
    text = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    base = text.replace("list[str]", "str").split(" | ")[0].strip()
    bounds = field.metadata.get("bounds", "")
    if base == "int":
        return {"seed": seed_int, "nonneg": nonneg_int}.get(bounds, positive_int)
    if base == "float":
        return {"positive": positive_float, "nonneg": nonneg_float}.get(bounds, finite_float)
    return str


def add_config_args(parser, cls, skip=(), renamed: dict[str, str] | None = None, only=None) -> None:
    """Options for every `knob` field of the config class `cls` (in `only` when given, not in
    `skip`), grouped as
    the class groups them; each default and help text comes from the class. `renamed` maps
    old option names, still accepted with a deprecation note, to field names."""
    from fmn_desktop.knobs import default_text, knob_fields

    groups: dict[str, argparse._ArgumentGroup] = {}
    fields = {
        f.name: f
        for f in knob_fields(cls)
        if f.name not in skip and (only is None or f.name in only)
    }
    for f in fields.values():
        meta = f.metadata
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = parser.add_argument_group(meta["group"] or None)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        help_text = meta["help"]
        shown = default_text(f)
        if shown and "default" not in help_text:
            help_text += f" (default: {shown})"
        kw = {"dest": f.name, "help": help_text.replace("%", "%%")}
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        kw["metavar"] = meta["metavar"] or flag.lstrip("-").upper().replace("-", "_")
        if meta["choices"]:
            kw.pop("metavar")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if "bool" in str(f.type):
            kw.pop("metavar", None)
            kw.update(action="store_false" if f.default else "store_true", default=f.default)
        elif meta["many"]:
            kw.update(action="append", default=None, required=required)
        else:
            kw.update(
                type=_value_type(f),
                default=None if (meta["by_mode"] or required) else f.default,
                required=required,
            )
        group.add_argument(flag, **kw)
    for old, name in (renamed or {}).items():
        if name not in fields:
            continue
        f = fields[name]
        new = f.metadata["flag"] or "--" + name.replace("_", "-")
        kw = {
            "dest": name,
            "help": argparse.SUPPRESS,
            "default": argparse.SUPPRESS,
            "action": _deprecated(new, f.metadata["many"]),
        }
        if not f.metadata["many"]:
            kw["type"] = _value_type(f)
        if f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(old, **kw)


def _deprecated(new_flag: str, many: bool):
    class Renamed(argparse.Action):
        """An old option name: works as `new_flag`, with a note on stderr."""

        def __call__(self, parser, namespace, values, option_string=None):
            print(
                f"fmn: {option_string} is deprecated (accepted until 0.2); use {new_flag}",
                file=sys.stderr,
            )
            if many:
                values = [*(getattr(namespace, self.dest, None) or []), values]
            setattr(namespace, self.dest, values)

    return Renamed


def config_from_args(cls, args, **fixed):
    """An instance of the config class `cls` from the options `add_config_args` made (those
    present in `args`), with `fixed` values on top."""
    from fmn_desktop.knobs import knob_fields

    values = {f.name: getattr(args, f.name) for f in knob_fields(cls) if hasattr(args, f.name)}
    values = {k: v for k, v in values.items() if v is not None or k in fixed}
    return cls(**{**values, **fixed})

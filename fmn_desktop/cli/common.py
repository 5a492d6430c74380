"""What every `fmn` command shares: model options, loading, errors, progress on stderr."""

from __future__ import annotations

import argparse
import json
import sys

from fmn_desktop.errors import FmnError

MODEL_HELP = (
    "a diffusers folder or an LDM/A1111 single-file .safetensors (SD1.x, SD2.x, SDXL); "
    "'default' (the default) is the embedded toy model"
)


class UsageError(FmnError):
    """Bad combination of arguments: exit status 2."""


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
        help="weights dtype (default: fp32 on the CPU, fp16 on CUDA)",
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
    from fmn_desktop.services.model import open_model

    with status(f"loading {args.model}"):
        return open_model(
            args.model,
            device=args.device,
            precision=args.dtype,
            family=args.family,
            prediction_type=args.prediction_type,
            config=args.config,
        )


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
    items (`phase` "references" while reference images are drawn, then one per step)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=verb, unit="step", file=sys.stderr)

    def progress(p):
        if p.phase != "train":  # "references", "attack": no step of its own
            bar.set_description("reference images" if p.phase == "references" else p.phase)
            return
        bar.set_description(verb)
        bar.total = p.total  # fast mode counts (layer, step) pairs
        bar.update(p.step - bar.n)
        if p.loss is not None:
            bar.set_postfix(loss=f"{p.loss:.4f}")

    return bar, progress


def phase_printer(progress=None):
    """A progress callback that prints a job's own reports (a text, no loss) on stderr and
    passes training steps to `progress`."""

    def report(value):
        if value.text and value.loss is None:
            print(f"{value.text} ...", file=sys.stderr, flush=True)
        elif progress is not None:
            progress(value)

    return report


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))

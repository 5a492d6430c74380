"""Opening a model: the embedded default or a local checkpoint, with one device/precision
policy for every front end.

    >>> model = open_model("default")  # doctest: +SKIP
    >>> model.has_judge
    True
"""

from __future__ import annotations

from fmn_desktop.errors import FmnError
from fmn_desktop.models.loading import LoadedModel

DEFAULT_MODEL = "default"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(
    device: str | None = None, precision: str | None = None, half_on_cpu: bool = False
):
    """(device, torch dtype) from a front end's choice.

    `device` "auto" (or None) is CUDA when available, else the CPU; `precision` "auto" (or
    None) is fp16 on CUDA and fp32 on the CPU. fp16/bf16 on the CPU runs the CUDA default's
    half path slowly, for checking it: refused unless `half_on_cpu` (an explicit choice,
    e.g. the CLI's `--dtype fp16`; `half_on_cpu_note` says what it costs).
    """
    import torch

    device = device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FmnError("no CUDA device is available here; choose the CPU")
    precision = precision or "auto"
    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in names:
        raise FmnError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if device == "cpu" and precision != "fp32" and not half_on_cpu:
        raise FmnError("fp16/bf16 are for CUDA; use fp32 precision on the CPU")
    return device, names[precision]


def half_on_cpu_note(device: str, dtype) -> str | None:
    """What a person should know when a model runs in half precision on the CPU."""
    import torch

    if device != "cpu" or dtype not in (torch.float16, torch.bfloat16):
        return None
    name = "fp16" if dtype == torch.float16 else "bf16"
    return (
        f"note: {name} on the CPU is slow and meant for checking the half-precision path "
        "that CUDA runs; use fp32 (the default there) for real work"
    )


def is_default(spec: str | None) -> bool:
    """Whether `spec` names the embedded default model."""
    return spec in (None, "", DEFAULT_MODEL)


def open_model(
    spec: str | None = DEFAULT_MODEL,
    *,
    device: str | None = "cpu",
    precision: str | None = "fp32",
    family: str | None = None,
    prediction_type: str | None = None,
    config: str | None = None,
    half_on_cpu: bool = False,
) -> LoadedModel:
    """Load a model by path, or the embedded default model for None / "default".

    `config` is a diffusers config folder for a single file of non-standard architecture;
    `half_on_cpu` lets fp16/bf16 run on the CPU (see `resolve_device`).
    """
    from fmn_desktop.models import load_pipeline

    device, dtype = resolve_device(device, precision, half_on_cpu)
    if is_default(spec):
        from fmn_desktop.toyworld import WEIGHTS_DIR, weights_available

        if not weights_available():
            raise FmnError(
                "the embedded default model's weights are not installed; give a model path "
                "(a diffusers folder or a .safetensors checkpoint)"
            )
        model = load_pipeline(WEIGHTS_DIR, family="sd1", dtype=dtype, device=device)
        model.mark_embedded()
        return model
    return load_pipeline(
        spec,
        family=family,
        prediction_type=prediction_type,
        dtype=dtype,
        device=device,
        config=config,
    )


def judged_concept(model, name: str, judge: str | None = None):
    """The toy-world concept `name`, checked for scoring: images are judged by the embedded
    model's judge (or `judge`, a judge file for a toy-world checkpoint). A clear error when
    `model` has no judge or the judge does not know `name`."""
    if not getattr(model, "has_judge", False) and judge is None:
        raise FmnError(
            "scores need a judge, and only the embedded model has one: load the embedded "
            "model, or give a judge file for a toy-world checkpoint (no judge exists for "
            "other models)"
        )
    return world_concept(name)


def world_concept(name: str):
    """The toy-world concept `name`; a clear error when the judge does not know it."""
    from fmn_desktop.toyworld import CONCEPTS

    if name not in CONCEPTS:
        raise FmnError(
            f"unknown concept {name!r}: the judge knows the toy world's concepts only "
            f"({', '.join(CONCEPTS)})"
        )
    return CONCEPTS[name]


def scoreable_concepts(model, concepts) -> list | None:
    """The embedded model's concepts for a job on `concepts`, when its judge can score them
    all (concepts of the toy world); else None."""
    if not getattr(model, "has_judge", False) or not concepts:
        return None
    from fmn_desktop.toyworld import CONCEPTS

    if not all(c in CONCEPTS for c in concepts):
        return None
    return [CONCEPTS[c] for c in concepts]


def model_name(model) -> str:
    """How a model is named in messages and job records."""
    if model is None:
        return ""
    if getattr(model, "has_judge", False):
        return "embedded toy model"
    return str(getattr(model, "source", "") or "model")

"""What the registry hands out: plain dataclasses, no database handles."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# How a command names a patch (`Registry.get_patch`); here, without sqlite, for the CLI's help.
SHA_PREFIX_MIN = 6
REF_HELP = (
    "a patch: its name, #ID (or id:ID, or a number of up to 5 digits), or a sha256 prefix "
    f"of at least {SHA_PREFIX_MIN} hex digits (digits only included)"
)


@dataclass(frozen=True)
class BaseModelRecord:
    id: int
    fingerprint: str
    name: str
    path: str
    family: str
    added: str
    notes: str = ""


@dataclass(frozen=True)
class PatchRecord:
    id: int
    sha256: str
    name: str
    title: str
    kind: str
    concepts: list[str]
    method: str
    family: str
    base_fingerprint: str
    format: str
    hyperparameters: dict[str, Any]
    scores: dict[str, Any]
    size: int
    created: str
    added: str
    source: str
    tags: list[str]
    notes: str
    path: Path  # the stored file
    base_model_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class StackItemRecord:
    position: int
    strength: float
    patch: PatchRecord


@dataclass(frozen=True)
class StackRecord:
    id: int
    name: str
    mode: str
    base_fingerprint: str
    notes: str
    created: str
    updated: str
    items: list[StackItemRecord] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for item in d["items"]:
            item["patch"]["path"] = str(item["patch"]["path"])
        return d


@dataclass(frozen=True)
class EvaluationRecord:
    id: int
    metric: str
    value: float
    concept: str = ""
    low: float | None = None
    high: float | None = None
    n: int | None = None
    patch_id: int | None = None
    stack_id: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    args: dict[str, Any]
    status: str
    message: str
    started: str
    finished: str | None
    patch_id: int | None = None
    stack_id: int | None = None
    pid: int | None = None
    host: str = ""

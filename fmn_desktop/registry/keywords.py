"""Words a patch is found by besides its name, title, concepts, tags and notes (the full-text
index): what it does (forget, correct), how (method, lora/diff), the kind of its concept
(identity, object, style; on the embedded model also colour, unsafe, generic) and the name of
the file it came from. Computed from the stored row, so older registries need no migration."""

from __future__ import annotations

import json
import re
from pathlib import PurePath

# `models.families.EMBEDDED_FAMILY` (not imported: it would load torch for a search).
EMBEDDED_FAMILY = "toy"


def keywords(row: dict) -> set[str]:
    """Lower-case words of `row` (a `patches` row) that the full-text index does not hold."""
    words = [row.get("kind") or "", row.get("method") or "", row.get("format") or ""]
    try:
        hyper = json.loads(row.get("hyperparameters") or "{}")
    except ValueError:
        hyper = {}
    if isinstance(hyper, dict):
        # "concept_kind" since the option was renamed; "kind" in older patches
        words += [str(hyper.get("concept_kind") or hyper.get("kind") or "")]
    if row.get("family") == EMBEDDED_FAMILY:
        words += _world_kinds(row.get("concepts") or "[]")
    source = row.get("source") or ""
    if source:
        words.append(PurePath(source.replace("\\", "/")).stem)
    return {w for text in words for w in re.findall(r"\w+", text.lower())}


def _world_kinds(concepts_json: str) -> list[str]:
    from fmn_desktop.toyworld.concepts import CONCEPTS

    try:
        names = json.loads(concepts_json)
    except ValueError:
        return []
    if not isinstance(names, list):
        return []
    return [CONCEPTS[n].kind for n in names if isinstance(n, str) and n in CONCEPTS]

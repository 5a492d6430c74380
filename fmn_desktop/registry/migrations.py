"""Schema of the registry as numbered sqlite-utils migrations, applied at every open.

Never edit a released migration: add the next number. Tests migrate an empty database and
one stopped at an older step and compare `columns_dict`.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("fmn_registry")

FTS_COLUMNS = ["name", "title", "concepts", "tags", "notes"]


@migrations()
def m001_initial(db: Database) -> None:
    db["base_models"].create(
        {
            "id": int,
            "fingerprint": str,
            "name": str,
            "path": str,
            "family": str,
            "added": str,
            "notes": str,
        },
        pk="id",
        not_null={"fingerprint"},
        defaults={"name": "", "path": "", "family": "", "notes": ""},
    )
    db["base_models"].create_index(["fingerprint"], unique=True)
    db["patches"].create(
        {
            "id": int,
            "sha256": str,
            "name": str,
            "title": str,
            "kind": str,  # forget | correct
            "concepts": str,  # JSON list
            "method": str,
            "family": str,
            "base_fingerprint": str,
            "format": str,  # lora | diff
            "hyperparameters": str,  # JSON object
            "scores": str,  # JSON object
            "size": int,
            "created": str,  # when the patch was made (its metadata)
            "added": str,  # when it entered the registry
            "source": str,  # where it was imported from
            "tags": str,  # JSON list
            "notes": str,
            "base_model_id": int,
        },
        pk="id",
        not_null={"sha256", "name", "kind"},
        defaults={"tags": "[]", "notes": "", "concepts": "[]", "scores": "{}"},
        foreign_keys=[("base_model_id", "base_models", "id")],
    )
    db["patches"].create_index(["sha256"], unique=True)
    db["patches"].create_index(["name"], unique=True)
    db["stacks"].create(
        {
            "id": int,
            "name": str,
            "mode": str,  # additive | fused
            "base_fingerprint": str,
            "notes": str,
            "created": str,
            "updated": str,
        },
        pk="id",
        not_null={"name", "mode"},
        defaults={"mode": "additive", "notes": "", "base_fingerprint": ""},
    )
    db["stacks"].create_index(["name"], unique=True)
    db["stack_items"].create(
        {"id": int, "stack_id": int, "patch_id": int, "position": int, "strength": float},
        pk="id",
        not_null={"stack_id", "patch_id", "position", "strength"},
        foreign_keys=[("stack_id", "stacks", "id"), ("patch_id", "patches", "id")],
    )
    db["stack_items"].create_index(["stack_id", "patch_id"], unique=True)
    db["evaluations"].create(
        {
            "id": int,
            "patch_id": int,
            "stack_id": int,
            "metric": str,  # mscore | retention | ...
            "concept": str,
            "value": float,
            "low": float,
            "high": float,
            "n": int,
            "settings": str,  # JSON object
            "created": str,
        },
        pk="id",
        not_null={"metric", "value"},
        defaults={"concept": "", "settings": "{}"},
        foreign_keys=[("patch_id", "patches", "id"), ("stack_id", "stacks", "id")],
    )
    db["jobs"].create(
        {
            "id": int,
            "kind": str,
            "args": str,  # JSON object
            "status": str,  # running | ok | failed | cancelled
            "message": str,
            "started": str,
            "finished": str,
            "patch_id": int,
            "stack_id": int,
        },
        pk="id",
        not_null={"kind", "status"},
        defaults={"message": "", "args": "{}"},
    )


@migrations()
def m002_search(db: Database) -> None:
    """Full-text search over names, concepts, tags and notes, kept current by triggers."""
    db["patches"].enable_fts(FTS_COLUMNS, create_triggers=True, tokenize="porter")
    db["patches"].populate_fts(FTS_COLUMNS)
    db["evaluations"].create_index(["patch_id"])
    db["evaluations"].create_index(["stack_id"])


@migrations()
def m003_job_owner(db: Database) -> None:
    """Which process runs a job (pid, host), so that one a dead process left "running" is
    marked "interrupted" at the next open."""
    db["jobs"].add_column("pid", int)
    db["jobs"].add_column("host", str)

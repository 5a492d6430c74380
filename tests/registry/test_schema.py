"""Migrations: an empty database and an old one end with the same schema; pragmas; location."""

import sqlite3

import pytest
from sqlite_utils import Database

from fmn_desktop.registry import RegistryCorruptError, open_registry, registry_dir
from fmn_desktop.registry.migrations import migrations

EXPECTED = {
    "base_models": {
        "id": int,
        "fingerprint": str,
        "name": str,
        "path": str,
        "family": str,
        "added": str,
        "notes": str,
    },
    "patches": {
        "id": int,
        "sha256": str,
        "name": str,
        "title": str,
        "kind": str,
        "concepts": str,
        "method": str,
        "family": str,
        "base_fingerprint": str,
        "format": str,
        "hyperparameters": str,
        "scores": str,
        "size": int,
        "created": str,
        "added": str,
        "source": str,
        "tags": str,
        "notes": str,
        "base_model_id": int,
    },
    "stacks": {
        "id": int,
        "name": str,
        "mode": str,
        "base_fingerprint": str,
        "notes": str,
        "created": str,
        "updated": str,
    },
    "stack_items": {
        "id": int,
        "stack_id": int,
        "patch_id": int,
        "position": int,
        "strength": float,
    },
    "evaluations": {
        "id": int,
        "patch_id": int,
        "stack_id": int,
        "metric": str,
        "concept": str,
        "value": float,
        "low": float,
        "high": float,
        "n": int,
        "settings": str,
        "created": str,
    },
    "jobs": {
        "id": int,
        "kind": str,
        "args": str,
        "status": str,
        "message": str,
        "started": str,
        "finished": str,
        "patch_id": int,
        "stack_id": int,
        "pid": int,
        "host": str,
    },
}


def _columns(db):
    return {t: db[t].columns_dict for t in EXPECTED}


def test_empty_database_migrates_to_the_schema(tmp_path):
    with open_registry(tmp_path) as reg:
        assert _columns(reg.db) == EXPECTED
        assert [m.name for m in migrations.applied(reg.db)] == [
            "m001_initial",
            "m002_search",
            "m003_job_owner",
        ]
        assert reg.db["patches"].detect_fts() == "patches_fts"
        fks = {(f.column, f.other_table) for f in reg.db["stack_items"].foreign_keys}
        assert fks == {("stack_id", "stacks"), ("patch_id", "patches")}
        conn = reg.db.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_old_database_is_migrated_on_open(tmp_path, make_patch):
    db = Database(tmp_path / "registry.db")
    migrations.apply(db, stop_before="m002_search")
    db["patches"].insert(
        {
            "sha256": "ab" * 32,
            "name": "old-one",
            "kind": "forget",
            "concepts": '["lighthouse"]',
            "tags": "[]",
            "notes": "from v0",
        }
    )
    assert not db["patches_fts"].exists()
    db.close()
    with open_registry(tmp_path) as reg:  # every entry point migrates
        assert _columns(reg.db) == EXPECTED
        assert [p.name for p in reg.search("lighthouse")] == ["old-one"]
    with open_registry(tmp_path) as reg:  # idempotent
        assert len(migrations.applied(reg.db)) == 3


def test_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "registry.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(RegistryCorruptError, match="damaged"):
        open_registry(tmp_path)


def test_location_option_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("FMN_REGISTRY", str(tmp_path / "env"))
    assert registry_dir(tmp_path / "opt") == tmp_path / "opt"
    assert registry_dir() == tmp_path / "env"
    monkeypatch.delenv("FMN_REGISTRY")
    default = registry_dir()
    assert default.name == "registry" and "forget-me-not-studio" in str(default)
    with open_registry(tmp_path / "a" / "b") as reg:
        assert (tmp_path / "a" / "b" / "registry.db").is_file() and reg.root == tmp_path / "a" / "b"
    assert sqlite3.connect(tmp_path / "a" / "b" / "registry.db").execute(
        "select count(*) from patches"
    ).fetchone() == (0,)

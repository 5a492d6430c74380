"""The registry against careless and concurrent use: references that cannot be confused,
search text that is only text, read-only databases, racing importers, killed processes."""

import contextlib
import io
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from registry_helpers import patch_bytes

from fmn_desktop.registry import NotFoundError, RegistryError, open_registry


def _digit_prefixed(reg):
    """Register patches until one's sha256 starts with 6 digits; return it."""
    for i in range(500):
        rec = reg.add_patch(patch_bytes([f"c{i}"]))
        if rec.sha256[:6].isdigit():
            return rec
    raise AssertionError("no digit-only sha256 prefix in 500 tries")


def test_ids_and_sha_prefixes_cannot_be_confused(reg):
    first = reg.add_patch(patch_bytes(["castle"]))
    rec = _digit_prefixed(reg)
    digits = rec.sha256[: len(rec.sha256) - len(rec.sha256.lstrip("0123456789"))]
    assert reg.get_patch(digits[:6]).id == rec.id  # 6+ digits: a hash prefix, never an id
    assert reg.get_patch(rec.sha256[:12].upper()).id == rec.id
    for ref in (f"#{first.id}", f"id:{first.id}", f"ID: {first.id}", str(first.id), first.id):
        assert reg.get_patch(ref).id == first.id
    with pytest.raises(NotFoundError, match="write #999999"):
        reg.get_patch("999999")
    with pytest.raises(NotFoundError):
        reg.get_patch("#999999")
    for bad in ("12", "#3", "id:4", "  "):
        with pytest.raises(RegistryError):
            reg.add_patch(patch_bytes(["named"]), name=bad)
    with pytest.raises(RegistryError, match="control characters"):
        reg.add_patch(patch_bytes(["named"]), name="evil\x1b[2J")


def test_search_text_is_never_fts_syntax(reg):
    reg.add_patch(patch_bytes(["castle"]), notes="a tall one")
    for query in ('"', "*", "AND", "NEAR(", "col:x", "^", "a OR", '"castle', "castle)"):
        reg.search(query)  # no "fts5: syntax error"
    assert [p.concepts for p in reg.search('"castle')] == [["castle"]]
    assert [p.concepts for p in reg.search("cast")] == [["castle"]]
    assert reg.search("castle tall") and not reg.search("castle short")


def test_strengths_are_bounded_in_stacks(reg):
    rec = reg.add_patch(patch_bytes(["castle"]))
    reg.create_stack("s")
    for value in (1e308, float("nan"), float("inf"), -101):
        with pytest.raises(RegistryError):
            reg.add_to_stack("s", rec.id, strength=value)
    assert reg.add_to_stack("#1", rec.id, strength=-100).items[0].strength == -100


def test_an_import_that_committed_stays_a_success(tmp_path, monkeypatch):
    """Another process removes the row right after the commit: the import still succeeded."""
    from fmn_desktop.registry.repository import Registry

    root = tmp_path / "reg"
    original = Registry.put_patch

    def racing_rm(self, *args, **kwargs):
        rec, new = original(self, *args, **kwargs)
        with open_registry(root) as other:
            other.remove_patch(rec.id)
        return rec, new

    monkeypatch.setattr(Registry, "put_patch", racing_rm)
    with open_registry(root) as reg:
        rec = reg.add_patch(patch_bytes(["castle"]))
        job = reg.start_job("import")
        reg.finish_job(job, "ok", "imported", patch=rec.id)  # the row is gone: no error
        assert rec.name == "forget-castle" and reg.list_patches() == []
        assert reg.job_record(job).status == "ok"


def test_racing_importers_of_one_file_see_it_registered_once(tmp_path):
    """Both processes passed the check outside the transaction: the second is told it is
    registered already (no raw UNIQUE constraint error)."""
    root = tmp_path / "reg"
    data = patch_bytes(["castle"])
    with open_registry(root) as a, open_registry(root) as b:
        a.find_sha = b.find_sha = lambda sha: None  # both miss the other's row outside
        rec1, new1 = a.put_patch(data, tags=["x"])
        rec2, new2 = b.put_patch(data, tags=["y"])
        assert (new1, new2) == (True, False) and rec1.id == rec2.id
    with open_registry(root) as reg:
        assert [p.tags for p in reg.list_patches()] == [["x", "y"]]


def test_three_processes_importing_at_once_lose_nothing(hostile_world):
    import reliability_harness as h

    report = h.concurrent_imports(hostile_world, rounds=2, procs=3)
    assert report.failures == [] and report.imported_same_once == report.rounds


def test_jobs_and_temporaries_of_dead_processes_are_tidied_at_open(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    root = tmp_path / "reg"
    with open_registry(root) as reg:
        rec = reg.add_patch(patch_bytes(["castle"]))
        jobs = [reg.start_job("import") for _ in range(3)]
    conn = sqlite3.connect(root / "registry.db")
    with conn:
        conn.execute("update jobs set pid = ? where id = ?", [dead_pid, jobs[0]])
        conn.execute(
            "update jobs set pid = ?, host = 'elsewhere' where id = ?", [dead_pid, jobs[1]]
        )  # another machine's: not ours to judge
    conn.close()
    store_tmp = rec.path.parent / f".fmn-tmp-{dead_pid}-0a0b0c0d-{rec.sha256}.safetensors"
    store_tmp.write_bytes(b"half a patch")
    root_tmp = root / f".fmn-tmp-{dead_pid}-0a0b0c0e-forget"
    root_tmp.write_bytes(b"half a patch")
    with open_registry(root) as reg:
        status = {j.id: j.status for j in reg.jobs()}
        assert status == {jobs[0]: "interrupted", jobs[1]: "running", jobs[2]: "running"}
        assert reg.job_record(jobs[2]).pid == os.getpid()
        assert reg.job_record(jobs[2]).host == socket.gethostname()
    assert not store_tmp.exists() and not root_tmp.exists()


def _as_reader(root: Path, fn):
    """Run `fn()` where `root` cannot be written; returns what it printed."""
    from reliability_harness import as_other_user

    os.chmod(root, 0o555)
    for p in root.iterdir():
        os.chmod(p, 0o755 if p.is_dir() else 0o444)
    return as_other_user(fn)


def test_a_read_only_registry_can_be_listed_shown_and_searched():
    from fmn_desktop.cli import main

    base = Path(tempfile.mkdtemp())
    os.chmod(base, 0o755)
    root = base / "reg"
    with open_registry(root) as reg:
        reg.add_patch(patch_bytes(["castle"]), tags=["demo"])

    for warm in (["list"], ["show", "#1"], ["search", "x"]):  # imports done before the fork
        with contextlib.redirect_stdout(io.StringIO()):
            main(["patches", *warm, "--registry", str(base / "warm")])

    def read():
        for argv in (["list"], ["show", "#1"], ["search", "castle"], ["tag", "#1", "x"]):
            code = main(["patches", *argv, "--registry", str(root)])
            print(f"exit {code}")

    out = _as_reader(root, read)
    assert out.count("exit 0") == 3, out
    assert "forget-castle" in out and "readonly database" not in out
    assert "exit 1" in out and "is read-only" in out  # a write: one clear line
    os.chmod(root, 0o755)
    with open_registry(root, readonly=True) as reg:
        assert [p.name for p in reg.list_patches()] == ["forget-castle"]
        with pytest.raises(RegistryError, match="read-only"):
            reg.add_patch(patch_bytes(["dog"]))

"""Faults: bad files, writes interrupted at any point, killed writers, two processes at once."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from registry_helpers import patch_bytes

from fmn_desktop.registry import (
    RegistryBusyError,
    RegistryCorruptError,
    RegistryError,
    open_registry,
)


def _state(reg):
    return ([(p.id, p.sha256) for p in reg.list_patches()], sorted(reg.store.files()))


def test_truncated_garbage_and_pickled_files_are_refused(reg, make_patch, tmp_path):
    data = make_patch()
    for bad, pattern in (
        (data[:-5], "truncated"),
        (data[:6], "not a safetensors file"),
        (b"\x80\x04\x95" + b"x" * 40, "pickled"),
        (b"PK\x03\x04" + b"x" * 40, "pickled"),
        (data[:8] + b"{not json" + data[17:], "unreadable safetensors header"),
    ):
        with pytest.raises(RegistryError, match=pattern):
            reg.add_patch(bad)
    with pytest.raises(RegistryError, match="no such patch file"):
        reg.add_patch(tmp_path / "missing.safetensors")
    assert _state(reg) == ([], [])


def test_add_interrupted_before_or_inside_the_transaction_leaves_old_state(
    reg, make_patch, monkeypatch
):
    keep = reg.add_patch(make_patch(["keep"]))
    before = _state(reg)

    def fail_before_row(db, row):
        raise RuntimeError("killed before the row")

    monkeypatch.setattr(reg, "_insert_patch_row", fail_before_row)
    with pytest.raises(RuntimeError):
        reg.add_patch(make_patch(["castle"]))
    assert _state(reg) == before  # the new file was taken back out

    original = type(reg)._insert_patch_row

    def fail_after_row(db, row):
        original(reg, db, row)
        raise RuntimeError("killed after the row, before commit")

    monkeypatch.setattr(reg, "_insert_patch_row", fail_after_row)
    with pytest.raises(RuntimeError):
        reg.add_patch(make_patch(["castle"]))
    assert _state(reg) == before and reg.search("castle") == []
    assert reg.get_patch(keep.id).path.is_file() and reg.verify() == []


def test_remove_interrupted_after_commit_leaves_new_state_and_gc_cleans(
    reg, make_patch, monkeypatch
):
    p = reg.add_patch(make_patch())

    def fail(sha):
        raise OSError("killed before the file went")

    monkeypatch.setattr(reg.store, "delete", fail)
    with pytest.raises(OSError):
        reg.remove_patch(p.id)
    assert reg.list_patches() == [] and reg.verify() == []
    assert reg.gc() == []  # within the grace period a file may belong to a live writer
    assert reg.gc(grace_s=0) == [p.path] and reg.store.files() == {}


def test_damaged_store_file_is_a_clear_error(reg, make_patch):
    p = reg.add_patch(make_patch())
    p.path.write_bytes(p.path.read_bytes()[:-4] + b"oops")
    with pytest.raises(RegistryCorruptError, match="damaged"):
        reg.read_patch_bytes(p.id)
    assert reg.verify() == [f"{p.name}: file damaged ({p.path})"]
    p.path.unlink()
    with pytest.raises(RegistryCorruptError, match="missing"):
        reg.read_patch_bytes(p.id)


def test_two_connections_wait_then_fail_clearly_and_readers_are_not_blocked(tmp_path, make_patch):
    a = open_registry(tmp_path)
    b = open_registry(tmp_path, busy_timeout=0.2)
    try:
        a.add_patch(make_patch(["one"]))
        with a._write():  # a holds the write lock (e.g. the GUI mid-import)
            a.db["patches"].update(1, {"notes": "uncommitted"})
            assert [p.notes for p in b.list_patches()] == [""]  # WAL: b still reads
            t0 = time.monotonic()
            with pytest.raises(RegistryBusyError, match="busy"):
                b.add_patch(make_patch(["two"]))
            assert time.monotonic() - t0 >= 0.15  # it waited for the busy timeout
        assert b.add_patch(make_patch(["two"])).name == "forget-two"
        assert {p.notes for p in b.list_patches()} == {"uncommitted", ""}
        assert b.store.files().keys() == {p.sha256 for p in b.list_patches()}
    finally:
        a.close()
        b.close()


def test_concurrent_writers_from_threads_all_land(tmp_path):
    open_registry(tmp_path).close()
    errors = []

    def writer(tag):
        try:
            with open_registry(tmp_path) as r:
                for i in range(8):
                    r.add_patch(patch_bytes([f"{tag}{i}"]), tags=[tag])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_registry(tmp_path) as r:
        assert len(r.list_patches(tag="a")) == 8 and len(r.list_patches(tag="b")) == 8
        assert r.verify() == []


WRITER = r"""
import os, random, sys
sys.path.insert(0, sys.argv[2])
from registry_helpers import patch_bytes
from fmn_desktop.registry import open_registry
reg = open_registry(sys.argv[1])
print("ready", flush=True)
rng = random.Random(int(sys.argv[3]))
i = 0
while True:
    i += 1
    data = patch_bytes([f"c{os.getpid()}-{i}"], n=rng.randint(1, 20000))
    rec = reg.add_patch(data, tags=["killed"])
    if rng.random() < 0.3:
        reg.remove_patch(rec.id)
"""


def test_writer_killed_at_random_points_leaves_registry_and_store_agreeing(tmp_path):
    """SIGKILL a writer (adds and removes in a loop) at random moments, several times."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    root = tmp_path / "reg"
    here = str(Path(__file__).parent)
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), here, str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open_registry(root) as reg:
            assert reg.verify() == []  # every row has its whole, unchanged file
            for rec in reg.list_patches():
                assert reg.read_patch_bytes(rec.id)
    with open_registry(root) as reg:
        n = len(reg.list_patches())
        assert n > 0, n
        reg.gc(grace_s=0)  # leftovers of killed writes: unreferenced files, temporaries
        assert set(reg.store.files()) == {p.sha256 for p in reg.list_patches()}
        assert reg.store.temporaries() == []


def test_one_registry_shared_by_threads(reg):
    """The GUI may hand one Registry to worker threads: statements never interleave."""
    errors = []

    def work(tag):
        try:
            for i in range(10):
                rec = reg.add_patch(patch_bytes([f"{tag}{i}"]))
                reg.tag(rec.id, add=[tag])
                reg.list_patches()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(reg.list_patches()) == 30 and reg.verify() == []

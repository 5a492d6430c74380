"""Atomic writes and their temporaries: one name pattern, removed on failure, on SIGTERM, and
swept at the next write when their writer is gone."""

import os
import signal
import subprocess
import sys
import time

import pytest

from fmn_desktop import fileio


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if fileio.is_temporary(p.name))


def test_temporaries_have_one_recognisable_name(tmp_path):
    t = fileio.temp_path(tmp_path / "model.safetensors")
    assert t.parent == tmp_path
    assert t.name.startswith(f".fmn-tmp-{os.getpid()}-") and t.name.endswith("model.safetensors")
    assert fileio.is_temporary(t.name) and not fileio.is_temporary("model.safetensors")
    long = fileio.temp_path(tmp_path / ("x" * 250))
    assert len(long.name.encode()) <= 200


def test_failed_writes_leave_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        fileio.atomic_write_bytes(target, b"new")
    with pytest.raises(OSError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(RuntimeError):
        with fileio.atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("killed")
    assert not (tmp_path / "folder").exists() and _temps(tmp_path) == []
    with pytest.raises(IsADirectoryError):
        fileio.atomic_write_bytes(tmp_path, b"x")


def test_written_files_get_the_usual_mode(tmp_path):
    fileio.atomic_write_bytes(tmp_path / "a", b"x")
    with fileio.atomic_path(tmp_path / "b") as tmp:
        tmp.write_bytes(b"x")
    for name in "ab":
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~fileio._UMASK


def test_folders_replace_only_when_asked(tmp_path):
    out = tmp_path / "model"
    with fileio.atomic_folder(out) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FileExistsError):
        with fileio.atomic_folder(out) as tmp:
            (tmp / "v2").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["v1"]
    with fileio.atomic_folder(out, replace=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["v2"] and _temps(tmp_path) == []


def test_sweep_takes_what_dead_writers_left_and_nothing_else(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    left = tmp_path / f".fmn-tmp-{dead_pid}-0123abcd-model.safetensors"
    left.write_bytes(b"half")
    left_dir = tmp_path / f".fmn-tmp-{dead_pid}-0123abce-model"
    (left_dir / "unet").mkdir(parents=True)
    mine = fileio.temp_path(tmp_path / "mine")  # a live writer's (this process)
    mine.write_bytes(b"busy")
    old = tmp_path / ".fmn-tmp-1-0123abcf-old"  # pid 1 is alive, but untouched for an hour
    old.write_bytes(b"stale")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    other = tmp_path / ".hidden-but-not-ours.tmp"
    other.write_bytes(b"keep")
    fileio.atomic_write_bytes(tmp_path / "next.bin", b"x")  # the next writer sweeps
    assert _temps(tmp_path) == [mine.name] and other.exists()


def test_sigterm_unwinds_so_the_temporary_goes(tmp_path):
    code = f"""
import sys, time
from fmn_desktop import fileio
with fileio.terminate_as_exception():
    try:
        with fileio.atomic_path({str(tmp_path / "big.bin")!r}) as tmp:
            tmp.write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(30)
    except fileio.Terminated as exc:
        sys.exit(128 + exc.signum)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"writing"
    assert _temps(tmp_path)  # the temporary exists while writing
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


def test_pickles_are_recognised_by_their_bytes(tmp_path):
    import pickle

    p = tmp_path / "renamed.safetensors"
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert fileio.looks_pickled(p)
    z = tmp_path / "zip.safetensors"
    z.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert fileio.looks_pickled(z)
    header = b'{"__metadata__":{}}'
    s = tmp_path / "real.safetensors"
    s.write_bytes(len(header).to_bytes(8, "little") + header)
    assert not fileio.looks_pickled(s)
    # a safetensors header length whose first byte is 0x80 is no pickle
    assert not fileio.pickled_bytes(b"\x80\x00\x00\x00\x00\x00\x00\x00{")

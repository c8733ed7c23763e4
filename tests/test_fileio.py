"""Atomic writes: a failed writer leaves the old file and no temporary file behind; a killed
writer's temporaries are swept, a live one's never; a full disk is one error naming the output."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from petseg.errors import DiskFullError
from petseg.fileio import (
    atomic_dir,
    atomic_file,
    atomic_write_bytes,
    create_once,
    stage_outputs,
    sweep_temporaries,
)


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(path) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    with atomic_file(path) as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_sweep_removes_what_a_killed_writer_left_and_keeps_a_live_ones(tmp_path):
    target = tmp_path / "prepared"
    dead, live, other = (tmp_path / f".prepared.tmp-{k}" for k in ("dead", "live", "x"))
    dead.mkdir()
    (dead / "train_images.npy").write_bytes(b"x" * 100)
    live.mkdir()
    (tmp_path / ".raw.tmp-x").mkdir()  # another output's
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        assert sweep_temporaries(target) == [dead]
    finally:
        holder.stdin.close()
        holder.wait()
    assert live.exists() and not other.exists() and (tmp_path / ".raw.tmp-x").exists()
    with atomic_dir(target) as tmp:  # the writer sweeps first: the holder is gone now
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".raw.tmp-x", "prepared"]


def test_disk_full_inside_an_atomic_write_names_the_output(tmp_path):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    message = r"prepared: No space left on device.*removed"
    with pytest.raises(DiskFullError, match=message), atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "half").write_bytes(b"x")
        try:
            full()
        except OSError as exc:  # as torch.save does: another error raised while handling it
            raise RuntimeError("unexpected pos") from exc
    assert list(tmp_path.iterdir()) == []


def test_stage_outputs_are_all_there_or_none(tmp_path):
    a, b = tmp_path / "model.pt", tmp_path / "plots" / "curve.csv"
    a.write_bytes(b"from an earlier run")
    with pytest.raises(RuntimeError), stage_outputs(a, b):
        assert not a.exists()  # nothing from before survives the start
        atomic_write_bytes(a, b"new")
        raise RuntimeError("failed before the curve")
    assert not a.exists() and not b.exists()
    with stage_outputs(a, b):
        atomic_write_bytes(a, b"new")
        atomic_write_bytes(b, b"new")
    assert a.read_bytes() == b.read_bytes() == b"new"


def test_create_once_links_a_complete_file_and_never_replaces_one(tmp_path):
    target = tmp_path / "store.db"

    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_once(target, interrupted)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary
    assert create_once(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert not create_once(target, lambda tmp: tmp.write_bytes(b"another"))
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]

"""Atomic writes: a failed writer leaves the old file and no temporary file behind."""

from __future__ import annotations

import pytest

from petseg.fileio import atomic_file, atomic_write_bytes


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

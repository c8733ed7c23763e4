"""A full disk: a tiny tmpfs where the test can mount one, and a file-size limit (RLIMIT_FSIZE).

Fault 3 of issue 15: preprocess writes memory-mapped arrays; on a full disk a write into a page
the disk has no room for killed it with SIGBUS (exit 135), and the temporary folder kept the disk
full on every retry. The arrays' blocks are now allocated first, so a full disk is one line.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.conftest import Archives
from faults.harness import (
    Project,
    assert_complete,
    assert_no_partial,
    assert_recovers,
    assert_user_error,
)
from petseg.data import download as dl

DRIVER = Path(__file__).with_name("tmpfs.py")


def in_tmpfs(project: Project, plan: dict) -> list[dict]:
    """Run ``plan`` (see tmpfs.py) with ``project/data`` on a tmpfs; skip where none can be
    mounted (no unshare, or user namespaces disabled)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no tmpfs for the full-disk test")
    report = project.root / "tmpfs.json"
    cmd = ["unshare", "-rm", sys.executable, str(DRIVER), str(project.root), json.dumps(plan)]
    proc = subprocess.run([*cmd, str(report)], capture_output=True, text=True, timeout=300)
    if proc.returncode and "mount" in proc.stderr + proc.stdout and not report.exists():
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


def test_full_disk_in_preprocess_is_one_line_and_frees_the_disk(
    project: Project, tiny_raw: Path
) -> None:
    # 64 KiB: room for a few rows of the arrays, not for the whole split.
    plan = {
        "size": "64k",
        "links": {"data/raw": str(tiny_raw)},
        "steps": [
            {"stage": "preprocess"},
            {"stage": "preprocess"},
            {"stage": "preprocess", "resize": "8m"},
        ],
    }
    full, again, roomy = in_tmpfs(project, plan)
    for step in (full, again):  # the retry sees the same free disk: nothing was left behind
        assert step["rc"] == 2, step["stderr"][-3000:]
        assert "Traceback" not in step["stderr"]
        [line] = [x for x in step["stderr"].splitlines() if x.startswith("error:")]
        assert "data/prepared: No space left on device" in line and "Free space" in line
        assert step["files"] == ["raw"] and step["used"] == 0
        assert step["orphans"] == 0
    assert roomy["rc"] == 0, roomy["stderr"][-3000:]
    assert "prepared/manifest.json" in roomy["files"]
    assert not [f for f in roomy["files"] if ".tmp-" in f]


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: no file of the stage may grow past ``limit`` bytes (Python ignores SIGXFSZ,
    so a write past it fails with EFBIG, as on a full disk)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_file_size_limit_in_preprocess(raw_project: Project) -> None:
    project = raw_project
    done = project.run("preprocess", preexec_fn=file_size_limit(20_000))
    assert_user_error(done, "data/prepared", "file-size limit (ulimit -f)", "Free space")
    assert_no_partial(project, "preprocess")
    assert_recovers(project, "preprocess")


def test_file_size_limit_while_downloading_keeps_the_part(
    project: Project, archives: Archives
) -> None:
    from http_server import serve

    with serve(archives.data) as server:
        project.params(archives.params([server.url]))
        done = project.run("download", preexec_fn=file_size_limit(20_000))
        assert_user_error(done, "data/archives/images.tar.gz.part", "resumed by the next run")
        assert_no_partial(project, "download")
        part = project.root / "data" / "archives" / f"{dl.IMAGES}.part"
        assert part.stat().st_size == 20_000
        assert_recovers(project, "download", archives.params([server.url]))
        assert server.state.served(dl.IMAGES)[-1].range == "bytes=20000-"
    assert_complete(project, "download")


@pytest.mark.slow
def test_file_size_limit_on_the_checkpoint(prepared_project: Project) -> None:
    project = prepared_project
    project.params({"tracking.enabled": False})
    done = project.run("train_unet", preexec_fn=file_size_limit(100_000))
    assert_user_error(done, "checkpoints/unet/last.pt", "file-size limit")
    assert_no_partial(project, "train_unet")
    assert_recovers(project, "train_unet", {"tracking.enabled": False})
    assert not (project.root / "mlflow.db").exists()

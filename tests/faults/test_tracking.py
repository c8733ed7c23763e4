"""The MLflow store: corrupt, locked for longer than tracking.wait_s, or not wanted at all.

Fault 6 of issue 15: a corrupt mlflow.db gave a 93-line traceback, a locked one about 1,880 lines
of tracebacks over 5.5 minutes, neither naming mlflow.db or a fix, and there was no way to train
without a store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faults.harness import (
    PIPELINE,
    Project,
    assert_complete,
    assert_no_partial,
    assert_recovers,
    assert_user_error,
    runs,
    stage_env,
)
from petseg import tracking
from petseg.errors import TrackingError

LOCK = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # held until the test closes stdin
"""


@pytest.mark.slow
def test_corrupt_store_is_one_line_naming_it(prepared_project: Project) -> None:
    project = prepared_project
    store = project.root / "mlflow.db"
    store.write_bytes(os.urandom(20_000))
    assert_user_error(
        project.run("train_unet"), f"MLflow store {store}", "move the file aside", "enabled: false"
    )
    assert_no_partial(project, "train_unet")
    store.rename(project.root / "mlflow.db.bad")  # what the message suggests
    assert_recovers(project, "train_unet")
    assert [r.info.status for r in runs(project)] == ["FINISHED"]


@pytest.mark.slow
def test_store_locked_longer_than_the_wait(prepared_project: Project) -> None:
    project = prepared_project
    store = project.root / "mlflow.db"
    # An initialised store, as a first training leaves it (WAL mode: reads still pass).
    setup = (
        "import pathlib, petseg.tracking as t; t.Tracker('locked', 'x', pathlib.Path.cwd()).end()"
    )
    subprocess.run([sys.executable, "-c", setup], cwd=project.root, env=stage_env(), check=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        project.params({"tracking.wait_s": 1.0, "tracking.experiment": "locked"})
        done = project.run("train_unet")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert_user_error(done, f"MLflow store {store}", "tracking.wait_s = 1 s", "enabled: false")
    assert len(done.stderr.splitlines()) < 40  # a few warnings, not pages of tracebacks
    assert_no_partial(project, "train_unet")
    assert_recovers(project, "train_unet", {"tracking.experiment": "locked"})


@pytest.mark.slow
def test_tracking_disabled_trains_and_evaluates_without_a_store(
    prepared_project: Project, tiny_raw: Path
) -> None:
    project = prepared_project
    shutil.copytree(tiny_raw, project.root / "data" / "raw")
    project.params({"tracking.enabled": False})
    trainings = [stage for stage in PIPELINE if stage.startswith("train_")]
    for stage in (*trainings, "evaluate"):
        done = project.run(stage)
        assert done.rc == 0, done.stderr[-3000:]
        assert_complete(project, stage)
    assert not (project.root / "mlflow.db").exists() and not (project.root / "mlartifacts").exists()


def test_a_store_that_is_not_a_database_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"not a database" * 100)
    with pytest.raises(TrackingError) as err:
        tracking.Tracker("x", "unet", tmp_path, system_metrics=False)
    assert str(err.value).startswith(f"MLflow store {store} is not usable (file is not a database)")
    assert "\n" not in str(err.value)

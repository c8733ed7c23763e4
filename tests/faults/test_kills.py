"""Kills of download, preprocess and train at random points.

SIGKILL allows no cleanup: the outputs must still be absent (never half-written), the stage's
worker processes must die with it, and the next run must sweep the temporaries and succeed.
SIGTERM and SIGINT (Ctrl-C) are caught: the stage cleans up, then ends by that signal.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from http_server import serve

from faults.conftest import Archives
from faults.harness import (
    Project,
    assert_complete,
    assert_no_partial,
    assert_stopped_by,
    kill_at_random_point,
    outputs,
    runs,
)
from petseg.data import download as dl

SIGKILL, SIGTERM, SIGINT = signal.SIGKILL, signal.SIGTERM, signal.SIGINT
CAUGHT = [SIGTERM, SIGINT]


def case_id(value: object) -> str:
    return value.name if isinstance(value, signal.Signals) else str(value)


def temporary_of(project: Project, out: str) -> Callable[[], bool]:
    """True once the stage has started writing ``out`` (its temporary sibling exists)."""
    path = project.root / out
    return lambda: any(path.parent.glob(f".{path.name}.tmp-*"))


def after_kill(project: Project, stage: str, done, sig: signal.Signals) -> bool:
    """The state right after the kill: all of the stage's outputs or none of them (a late kill
    lands after the last one was written); returns whether they are all there."""
    present = sorted(project.exists(stage))
    finished = present == sorted(outputs(stage))
    assert finished or present == [], f"{stage} left {present}"
    if done.rc == 0:  # it ended before the signal came
        assert finished and project.temporaries() == []
    elif sig == SIGKILL:
        assert done.rc == -SIGKILL  # its temporaries wait for the next run
    else:
        assert_stopped_by(done, sig)
        stops = [line for line in done.stderr.splitlines() if "stopped by" in line]
        expected = f"stopped by {sig.name}: nothing half-written was kept; run again to continue"
        # Once the stage's work is done the signal may end the process before anything is said.
        assert stops == [expected] or (finished and stops == [])
        assert project.temporaries() == []
    return finished


def rerun(project: Project, stage: str) -> None:
    done = project.run(stage)
    assert done.rc == 0, done.stderr[-3000:]
    assert_complete(project, stage)  # the killed run's temporaries are swept


# -------------------------------------------------------------------------------- download
SLOW_SYNTHETIC = {"data.synthetic.n_trainval": 240, "data.synthetic.n_test": 40}


@pytest.mark.parametrize(
    ("sig", "seed"), [(SIGKILL, 0), (SIGKILL, 1), (SIGTERM, 0), (SIGINT, 0)], ids=case_id
)
def test_download_killed(project: Project, sig: signal.Signals, seed: int) -> None:
    project.params(SLOW_SYNTHETIC)
    ready = temporary_of(project, "data/raw")
    done = kill_at_random_point(project, "download", sig, ready, f"download-{seed}", 1.5)
    after_kill(project, "download", done, sig)
    rerun(project, "download")


def test_download_interrupted_mid_transfer_resumes(project: Project, archives: Archives) -> None:
    with serve(archives.data) as server:
        server.state.stall_s = {dl.IMAGES: [30.0]}  # headers sent, the body not yet
        project.params(archives.params([server.url], timeout_s=20.0))
        started = lambda: bool(server.state.served(dl.IMAGES))  # noqa: E731
        done = kill_at_random_point(project, "download", SIGINT, started, "transfer", 0.3)
        after_kill(project, "download", done, SIGINT)
        rerun(project, "download")
        assert [h.status for h in server.state.served(dl.IMAGES)] == [200, 200]


# ------------------------------------------------------------------------------ preprocess
@pytest.fixture
def heavy_project(project: Project, heavy_raw: Path) -> Project:
    """data/raw of heavy_raw (hard links), prepared by two processes."""
    for src in heavy_raw.rglob("*"):
        dest = project.root / "data" / "raw" / src.relative_to(heavy_raw)
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif src.parent != heavy_raw:
            os.link(src, dest)
    project.params({"preprocess.workers": 2})
    return project


# Fault 2 of issue 15: the forked worker hung on its own pipe, the temporary folder stayed.
@pytest.mark.parametrize(
    ("sig", "seed"),
    [(SIGKILL, 0), (SIGKILL, 1), (SIGKILL, 2), (SIGTERM, 0), (SIGINT, 0)],
    ids=case_id,
)
def test_preprocess_killed(heavy_project: Project, sig: signal.Signals, seed: int) -> None:
    ready = temporary_of(heavy_project, "data/prepared")
    # The workers must die with the main process, not decode on for nobody: 2 s at most.
    done = kill_at_random_point(
        heavy_project, "preprocess", sig, ready, f"preprocess-{seed}", 1.5, orphans_within_s=2.0
    )
    after_kill(heavy_project, "preprocess", done, sig)
    rerun(heavy_project, "preprocess")


# ----------------------------------------------------------------------------------- train
def checkpoint_of(project: Project) -> Callable[[], bool]:
    return lambda: (project.root / "checkpoints" / "unet" / "last.pt").exists()


def started(project: Project) -> Callable[[], bool]:
    return lambda: True


# Fault 9 of issue 15: a killed training left a half curve in plots/train (a DVC output).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("ready", "within_s", "seed"),
    [(started, 8.0, 0), (checkpoint_of, 1.5, 1)],
    ids=["anywhere", "while-training"],
)
def test_train_killed_leaves_no_output_and_resumes(
    prepared_project: Project, ready: Callable, within_s: float, seed: int
) -> None:
    project = prepared_project
    project.params({"train.epochs": 12})
    done = kill_at_random_point(
        project, "train_unet", SIGKILL, ready(project), f"train-{seed}", within_s
    )
    finished = after_kill(project, "train_unet", done, SIGKILL)
    rerun(project, "train_unet")
    assert not (project.root / "checkpoints" / "unet" / "last.pt").exists()
    # Resumed in the same run, unless the kill came after the training had ended.
    assert [r.info.status for r in runs(project)] == ["FINISHED"] * (1 + finished)


# Fault 8 of issue 15: Ctrl-C marked the run FAILED, and the error tag outlived the resume.
@pytest.mark.slow
@pytest.mark.parametrize("sig", CAUGHT, ids=case_id)
def test_stopped_training_is_killed_in_mlflow_and_resumes(
    prepared_project: Project, sig: signal.Signals
) -> None:
    project = prepared_project
    project.params({"train.epochs": 30})  # long enough to be stopped mid-way on a fast machine
    ready = checkpoint_of(project)
    done = kill_at_random_point(project, "train_unet", sig, ready, f"stop-{sig.name}", 0.3)
    assert_stopped_by(done, sig)
    assert_no_partial(project, "train_unet")
    [run] = runs(project)
    assert run.info.status == "KILLED"
    assert run.data.tags["petseg.error"] == f"Stopped: {sig.name}"
    rerun(project, "train_unet")
    [run] = runs(project)
    assert run.info.status == "FINISHED" and "petseg.error" not in run.data.tags
    assert sorted(outputs("train_unet")) == sorted(project.exists("train_unet"))

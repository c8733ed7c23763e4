"""Resume only a checkpoint of the same code and params (fault 5 of issue 15), and end the MLflow
run of one that is ignored (fault 8: it stayed RUNNING forever)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch

from faults.harness import (
    PIPELINE,
    ROOT,
    Project,
    assert_complete,
    checkpoint_after_epoch,
    kill_at_random_point,
    runs,
    stage_env,
)
from petseg.checkpoint import Checkpoint, TrainState, code_files, differences, provenance
from petseg.config import ArchParams, TrainParams
from petseg.models import ARCHITECTURES
from petseg.runtime import Runtime

CHECKPOINT = "checkpoints/unet/last.pt"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_fingerprinted_code_is_what_dvc_yaml_lists(arch: str) -> None:
    """The files whose change invalidates a checkpoint are the stage's code deps (a test in
    test_structure.py checks that these are what the stage runs)."""
    deps = {d for d in PIPELINE[f"train_{arch}"]["deps"] if d.endswith(".py")}
    fingerprinted = {p.relative_to(ROOT).as_posix() for p in code_files(arch)}
    assert fingerprinted | {"stages/train.py"} == deps


def test_differences_name_what_changed(tiny_prepared: Path) -> None:
    now = provenance("unet", TrainParams(), ArchParams(), tiny_prepared)
    assert differences(now, now) is None
    assert differences(None, now) == "it records no provenance (an older petseg made it)"
    made = {**now, "params": "0", "code": {**now["code"], "petseg/models/unet.py": "0"}}
    assert differences(made, now) == "other params, other code (petseg/models/unet.py changed)"
    assert differences({**now, "torch": "1.0"}, now) == f"torch 1.0 (now {now['torch']})"


def test_unreadable_checkpoint_is_ignored_with_the_reason(
    tmp_path: Path, tiny_prepared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"torn by a crash")
    made = provenance("unet", TrainParams(), ArchParams(), tiny_prepared)
    rt = Runtime(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    state = TrainState(*[None] * 6)  # type: ignore[arg-type]
    restored = Checkpoint(path, made).restore(state, rt)
    assert not restored.resumed and restored.abandoned_run is None
    assert "it is unreadable" in restored.reason and "ignoring checkpoint" in caplog.text


def kill_after_an_epoch(project: Project) -> None:
    """Train, and SIGKILL the training once its checkpoint holds an epoch (within its first
    epochs)."""
    ready = checkpoint_after_epoch(project.root / CHECKPOINT)
    done = kill_at_random_point(project, "train_unet", signal.SIGKILL, ready, "resume", 1.0)
    assert done.rc == -signal.SIGKILL, done.stderr[-3000:]
    [run] = runs(project)
    assert run.info.status == "RUNNING"  # what a SIGKILL leaves


def assert_started_over(project: Project, done, reason: str) -> None:
    assert done.rc == 0, done.stderr[-3000:]
    assert f"ignoring checkpoint {CHECKPOINT}: made from {reason}; training from the start" in (
        done.stderr
    )
    assert "resuming after epoch" not in done.stderr
    assert_complete(project, "train_unet")
    old, new = sorted(runs(project), key=lambda r: r.info.start_time)
    assert old.info.status == "KILLED" and new.info.status == "FINISHED"
    assert old.data.tags["petseg.error"].startswith("abandoned: a later training ignored")


@pytest.mark.slow
def test_edited_code_starts_over(prepared_project: Project) -> None:
    project = prepared_project
    copy = project.root / "code"
    shutil.copytree(ROOT / "src" / "petseg", copy / "petseg")
    project.env = stage_env(PYTHONPATH=str(copy))
    project.params({"train.epochs": 12})
    kill_after_an_epoch(project)
    with (copy / "petseg" / "models" / "unet.py").open("a") as fh:
        fh.write("# an edit: the checkpoint's weights come from other code\n")
    done = project.run("train_unet")
    assert_started_over(project, done, "other code (petseg/models/unet.py changed)")


@pytest.mark.slow
def test_changed_params_start_over(prepared_project: Project) -> None:
    project = prepared_project
    project.params({"train.epochs": 12})
    kill_after_an_epoch(project)
    project.params({"train.epochs": 12, "train.lr": 0.02})
    done = project.run("train_unet")
    assert_started_over(project, done, "other params")

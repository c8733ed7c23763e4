"""Run a stage exactly as dvc.yaml runs it, in a tiny project folder, and check the invariant.

The invariant of every fault a user can cause (README, "When something goes wrong"):

- exit code 2 with one ``error:`` line naming the file or params key (or, for a stop by a signal,
  that signal's own status) and no traceback;
- no partial output: every output the stage declares in dvc.yaml is absent, and no temporary
  (``.<name>.tmp-*``) is left anywhere in the project (after a SIGKILL, none after the next run);
- no orphan process: the stage's process group is empty once it has ended;
- the next correct run succeeds.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
PIPELINE: dict[str, Any] = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# What every project of the suite adds to TINY: no model logging (the slowest MLflow call).
BASE: Mapping[str, Any] = {**TINY, "tracking.log_model": False}


def command(stage: str) -> list[str]:
    """The stage's ``cmd`` from dvc.yaml, run by this interpreter."""
    cmd = shlex.split(PIPELINE[stage]["cmd"])
    assert cmd[0] == "python", cmd
    return [sys.executable, str(ROOT / cmd[1]), *cmd[2:]]


def outputs(stage: str) -> list[str]:
    """Everything the stage declares it writes (outs, metrics, plots)."""
    found = []
    for key in ("outs", "metrics", "plots"):
        for out in PIPELINE[stage].get(key, []):
            found.append(out if isinstance(out, str) else next(iter(out)))
    return found


def nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.augment.hflip": True} -> {"train": {"augment": {"hflip": True}}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage: this checkout's petseg, no store or DVC context of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PETSEG_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"  # a proxy must never see the server
    env.update(extra)
    return env


@dataclass(frozen=True)
class Done:
    """How a stage ended."""

    rc: int
    stdout: str
    stderr: str
    pgid: int

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@dataclass
class Project:
    """A project folder: params.yaml and what the stages write, as in the repository."""

    root: Path
    env: dict[str, str] | None = None  # the stages' environment; None: stage_env()

    def params(self, overrides: Mapping[str, Any] | None = None, text: str | None = None) -> None:
        """params.yaml: BASE plus ``overrides`` (dotted keys), or exactly ``text``."""
        if text is None:
            text = yaml.safe_dump(nested({**BASE, **(overrides or {})}), sort_keys=False)
        (self.root / "params.yaml").write_text(text)

    def start(
        self,
        stage: str,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable | None = None,
        args: tuple[str, ...] = (),
    ) -> subprocess.Popen:
        """The stage running in its own process group (its workers too); output to files."""
        log = self.root / f".{stage}.log"
        return subprocess.Popen(
            [*command(stage), *args],
            cwd=self.root,
            env=dict(env or self.env or stage_env()),
            stdout=(log.with_suffix(".out")).open("w"),
            stderr=log.open("w"),
            start_new_session=True,
            preexec_fn=preexec_fn,
        )

    def finish(self, proc: subprocess.Popen, stage: str, timeout: float = 300) -> Done:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log = self.root / f".{stage}.log"
        return Done(rc, log.with_suffix(".out").read_text(), log.read_text(), proc.pid)

    def run(self, stage: str, **kwargs: Any) -> Done:
        done = self.finish(self.start(stage, **kwargs), stage)
        assert_no_orphans(done.pgid)
        return done

    def temporaries(self) -> list[Path]:
        return sorted(self.root.rglob(".*.tmp-*"))

    def exists(self, stage: str) -> list[str]:
        return [out for out in outputs(stage) if (self.root / out).exists()]


# --------------------------------------------------------------------------- the invariant
def assert_user_error(done: Done, *needles: str) -> str:
    """Exit code 2, one ``error:`` line holding every needle, no traceback; returns the line."""
    assert done.rc == 2, f"exit code {done.rc}:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert len(done.errors) == 1, done.errors
    line = done.errors[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_stopped_by(done: Done, sig: signal.Signals) -> None:
    """Ended by ``sig`` itself (a caught stop re-raises it after cleaning up)."""
    assert done.rc == -sig, f"exit code {done.rc}, expected -{sig.name}:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


def assert_no_partial(project: Project, *stages: str) -> None:
    """None of the stages' outputs exists and no temporary is left in the project."""
    for stage in stages:
        assert project.exists(stage) == [], f"{stage} left {project.exists(stage)}"
    assert project.temporaries() == []


def assert_complete(project: Project, stage: str) -> None:
    assert sorted(project.exists(stage)) == sorted(outputs(stage))
    assert project.temporaries() == []


def assert_recovers(
    project: Project, stage: str, overrides: Mapping[str, Any] | None = None
) -> Done:
    """The next correct run (``overrides`` applied to BASE) succeeds and leaves no temporary."""
    project.params(overrides)
    done = project.run(stage)
    assert done.rc == 0, done.stderr[-4000:]
    assert_complete(project, stage)
    return done


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of the process group ``pgid``."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def assert_no_orphans(pgid: int, timeout: float = 10.0) -> None:
    """The stage's process group is empty (a worker may take a moment to notice)."""
    deadline = time.monotonic() + timeout
    while members := group_members(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError(f"orphans of process group {pgid}: {members}")
        time.sleep(0.05)


# -------------------------------------------------------------------------------- kills
def kill_at_random_point(
    project: Project,
    stage: str,
    sig: signal.Signals,
    ready: Callable[[], bool],
    seed: str,
    within_s: float,
    orphans_within_s: float = 10.0,
) -> Done:
    """Start ``stage``, wait until ``ready()``, then send ``sig`` after a random delay (seeded by
    ``seed``, so a failure can be replayed) of at most ``within_s``; its processes must all be
    gone ``orphans_within_s`` after it ended."""
    proc = project.start(stage)
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"{stage} ended before the kill: {proc.returncode}"
        assert time.monotonic() < deadline, f"{stage} never got ready"
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0, within_s))
    if proc.poll() is None:
        proc.send_signal(sig)
    done = project.finish(proc, stage)
    assert_no_orphans(done.pgid, orphans_within_s)
    return done


def checkpoint_after_epoch(path: Path, epoch: int = 1) -> Callable[[], bool]:
    """Ready once the training checkpoint at ``path`` holds ``epoch`` finished epochs (the
    first checkpoint, written before the MLflow run exists, holds none)."""
    import torch

    def ready() -> bool:
        try:
            return path.exists() and torch.load(path, weights_only=True)["epoch"] >= epoch
        except FileNotFoundError:  # replaced between the two calls
            return False

    return ready


def runs(project: Project, experiment: str = "petseg") -> list:
    """The MLflow runs of the project's store (the test reads it; src goes through tracking)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])

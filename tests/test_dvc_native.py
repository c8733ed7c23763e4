"""Where DVC and MLflow users look, on a git copy of the project with the tiny preset committed as
its baseline (what a fresh clone holds after `make demo`):

- MLflow, through a real `mlflow server` on 127.0.0.1: the network runs carry their test scores,
  dataset and image size under one parent run that holds the report; the experiment opens in the
  model-training view;
- every DVC command of the README's "DVC" section, as written, succeeds, and `dvc exp show
  --only-changed` stays narrow;
- `dvc push`, then a fresh clone's `make demo` pulls every output, runs no stage and leaves
  `git status` clean;
- the run-cache: returning to params that already ran restores outputs instead of training.

The tests share one project and run in file order (each leaves it as the next expects).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import git_copy

from petseg.config import ARCH_SECTIONS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARCHS = tuple(ARCH_SECTIONS)
TRAIN_STAGES = tuple(f"train_{a}" for a in ARCHS)
BIN = Path(sys.executable).parent
CACHED = "is cached - skipping run"  # what DVC prints when the run-cache restores a stage
MAX_COLUMNS = 30


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.2"  # tiny trainings last seconds
    return {**env, **extra}


def _run(cmd: str | list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=1500,
        shell=isinstance(cmd, str),
    )  # fmt: skip
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (its own sqlite store and artifact folder)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
         "--artifacts-destination", str(home / "artifacts"), "--workers", "1"],
        cwd=home, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_preset, server) -> Path:
    """A git copy whose committed baseline is the tiny preset's pipeline run, tracked by the
    server: params.yaml, dvc.lock, metrics/ and plots/ committed, as a fresh clone holds them."""
    dest = git_copy(tmp_path_factory.mktemp("dvc-native") / "petseg")
    tiny_preset(dest, {"tracking.system_metrics": True})
    (dest / "tiny.yaml").unlink()
    _run([sys.executable, "-m", "dvc", "repro"], dest, MLFLOW_TRACKING_URI=server)
    _commit(dest, "the tiny baseline and what it produced")
    return dest


def test_mlflow_runs_hold_the_test_scores_under_one_parent_with_the_report(project, server):
    from mlflow import MlflowClient

    client = MlflowClient(server)
    exp = client.get_experiment_by_name("petseg")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    found = client.search_runs([exp.experiment_id], order_by=["metrics.`test/miou` DESC"])
    runs = [r for r in found if "petseg.parent" not in r.data.tags]
    assert found[: len(runs)] == runs  # the network runs first, by test mIoU; then the parent
    assert sorted(r.data.tags["petseg.arch"] for r in runs) == sorted(ARCHS)
    mious = [r.data.metrics["test/miou"] for r in runs]
    assert mious == sorted(mious, reverse=True) and all(0 <= m <= 1 for m in mious)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    group = parent.data.tags["petseg.group"]
    assert parent.info.run_name == group and group.startswith("repro-")
    for run in runs:
        arch = run.data.tags["petseg.arch"]
        assert run.info.run_name == f"{arch}-{group}"
        assert run.data.tags["petseg.group"] == group
        assert run.data.params["preprocess.image_size"] == "32"
        assert run.data.params["data.source"] == "synthetic"
        for key in ("test/pixel_accuracy", "test/iou_border", "test/boundary_iou"):
            assert 0 <= run.data.metrics[key] <= 1
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "synthetic-32px" and len(dataset.dataset.digest) == 16
        assert any(t.key == "mlflow.data.context" and t.value == "training" for t in dataset.tags)
        assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
        models = client.search_logged_models(
            [exp.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        (model,) = models
        assert model.name == run.info.run_name
        on_model = {m.key: m.value for m in model.metrics or []}
        assert on_model["test/miou"] == run.data.metrics["test/miou"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report", "metrics", "predictions"} <= artifacts
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/index.html" in report


def _readme_dvc_commands() -> list[str]:
    """The commands of the README's code block under "## DVC", as a user types them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## DVC", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_every_dvc_command_of_the_readme_runs_as_written(project, server):
    commands = _readme_dvc_commands()
    kinds = {" ".join(c.split()[1:3]) for c in commands if c.startswith(".venv/bin/dvc")}
    assert kinds >= {"exp run", "exp show", "metrics show", "metrics diff", "params diff",
                     "plots show", "plots diff", "push", "pull"}  # fmt: skip
    for command in commands:
        if not command.startswith(".venv/bin/dvc"):
            continue
        out = _run(command.replace(".venv/bin/", f"{BIN}/", 1), project, MLFLOW_TRACKING_URI=server)
        if command.startswith(".venv/bin/dvc metrics diff"):
            assert "metrics/scores.json" in out.stdout  # a baseline to compare against
        if command.startswith(".venv/bin/dvc plots diff"):
            assert "main" in (project / "dvc_plots/index.html").read_text(encoding="utf-8")


def _columns(table: str) -> list[str]:
    """The column names of `dvc exp show --md` (what the terminal table shows)."""
    return [c.strip() for c in table.splitlines()[0].strip().strip("|").split("|")]


def test_exp_show_after_one_set_param_is_narrow(project):
    dvc = str(BIN / "dvc")
    changed = _columns(_run([dvc, "exp", "show", "--only-changed", "--md"], project).stdout)
    assert len(changed) <= MAX_COLUMNS, changed
    assert changed[:2] == ["Experiment", "Created"] and "train.lr" in changed
    # The bound holds however many scores the variant moves (on this tiny run some stay level):
    # every metric but the parameter counts, the param, and the dep folders between stages.
    every = _columns(_run([dvc, "exp", "show", "--md"], project).stdout)
    metrics = [c for c in every if c.split(".", 1)[0] in ARCHS]
    assert len(metrics) == len(ARCHS) * 6
    deps = [c for c in changed if "/" in c or c in ("models", "metrics", "plots")]
    assert sorted(deps) == ["metrics", "metrics/train", "models", "plots"]
    worst = 2 + len([m for m in metrics if not m.endswith(".params")]) + 1 + len(deps)
    assert worst == 27 <= MAX_COLUMNS


def test_a_fresh_clone_pulls_everything_runs_nothing_and_stays_clean(project, tmp_path):
    # `make demo` on a fresh clone beside the pushed project: same default remote folder.
    clone = project.parent / "fresh"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    out = _run(["make", "demo", "-o", "install"], clone)
    assert "Running stage" not in out.stdout, out.stdout
    assert (clone / "report/index.html").is_file() and (clone / "models/unet.pt").is_file()
    assert _run(["git", "status", "--porcelain"], clone).stdout == ""
    status = _run([str(BIN / "dvc"), "status"], clone)
    assert "up to date" in status.stdout


def test_keys_that_cannot_change_an_output_rerun_nothing(project):
    params = project / "params.yaml"
    committed = params.read_text()
    edited = committed.replace("log_model: true", "log_model: false")
    edited = edited.replace("experiment: petseg", "experiment: elsewhere")
    assert edited.count("false") > committed.count("false") and "elsewhere" in edited
    params.write_text(edited)
    try:
        status = _run([str(BIN / "dvc"), "status"], project)
    finally:
        params.write_text(committed)
    assert "up to date" in status.stdout, status.stdout


def _restored(out: str) -> set[str]:
    return set(re.findall(rf"Stage '(\w+)' {CACHED}", out))


def test_returning_to_params_that_already_ran_restores_instead_of_training(project, server):
    dvc = str(BIN / "dvc")
    trained = _run([dvc, "exp", "run", "-S", "train.lr=0.02"], project, MLFLOW_TRACKING_URI=server)
    assert "Running stage 'train_unet'" in trained.stdout
    # The README's experiment (train.lr=0.001) ran before: the run-cache restores all of it.
    again = _run([dvc, "exp", "run", "-S", "train.lr=0.001"], project, MLFLOW_TRACKING_URI=server)
    assert "Running stage" not in again.stdout, again.stdout
    assert _restored(again.stdout) >= {*TRAIN_STAGES, "evaluate", "report"}
    # Back to the committed params with a plain dvc repro: restored too.
    _run(["git", "checkout", "params.yaml"], project)
    back = _run([dvc, "repro"], project, MLFLOW_TRACKING_URI=server)
    assert "Running stage" not in back.stdout, back.stdout
    assert _restored(back.stdout) >= {*TRAIN_STAGES, "evaluate", "report"}
    assert _run(["git", "status", "--porcelain"], project).stdout == ""

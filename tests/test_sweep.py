"""The regularization sweep: grid, collection from `dvc exp show`, MLflow under parallel runs.

The fast tests check the grid, the collection and the tracking helpers in-process. The slow ones
run a real sweep on a git+DVC copy of the project (as in test_pipeline.py): five queued
experiments, one of them broken, two at a time, all writing to the project's one MLflow store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from petseg import CLASSES, config, sweep, tracking
from petseg import results as R
from petseg.errors import DataError, ParamsError
from petseg.results import ArchSummary, Intervals, Summary
from petseg.tracking import served

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.Params().model_dump()  # the defaults: augmentation and weight decay on


# ------------------------------------------------------------------------------------ grid
def test_baseline_is_unregularized_and_each_variant_turns_on_one_thing():
    base = sweep.overrides("baseline")
    assert base == {
        "train.augment.enabled": False,
        "models.strided.dropout": 0.0,
        "models.unpool.dropout": 0.0,
        "models.unet.dropout": 0.0,
        "train.weight_decay": 0.0,
        "train.label_smoothing": 0.0,
    }
    changed = {
        v: {k for k, x in sweep.overrides(v).items() if x != base[k]} for v in sweep.VARIANTS
    }
    assert changed == {
        "baseline": set(),
        "augment": {"train.augment.enabled"},
        "dropout": {"models.strided.dropout", "models.unpool.dropout", "models.unet.dropout"},
        "weight_decay": {"train.weight_decay"},
        "label_smoothing": {"train.label_smoothing"},
        "all": set(base),
    }
    for variant in sweep.VARIANTS:  # the name is recovered from the params alone
        assert sweep.variant_of(sweep._with(PARAMS, sweep.overrides(variant))) == variant
    assert sweep.variant_of(PARAMS) == "augment+weight_decay"


def test_plan_names_experiments_and_validates_every_one_before_queueing():
    planned = sweep.plan(["dropout"], [0, 3], {"train.epochs": 2}, PARAMS)
    assert [p.name for p in planned] == ["reg-dropout-s0", "reg-dropout-s3"]
    cmd = planned[1].command()
    assert cmd[:6] == ["dvc", "exp", "run", "--queue", "-n", "reg-dropout-s3"]
    sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "-S"]
    assert {"train.epochs=2", "models.unet.dropout=0.2", "train.seed=3"} <= set(sets)
    assert "train.augment.enabled=false" in sets and "train.weight_decay=0.0" in sets

    assert sweep._parse_sets(["train.lr=1e-3", "data.source=synthetic"]) == {
        "train.lr": 0.001,
        "data.source": "synthetic",
    }
    with pytest.raises(ParamsError, match=r"train\.epochs = 0 is invalid"):
        sweep.plan(["baseline"], [0], {"train.epochs": 0}, PARAMS)
    with pytest.raises(ParamsError, match=r"train\.seed, train\.weight_decay: set by the sweep"):
        sweep.plan(["baseline"], [0], {"train.weight_decay": 0.1, "train.seed": 1}, PARAMS)
    with pytest.raises(ParamsError, match=r"unknown key train\.nope"):
        sweep.plan(["baseline"], [0], {"train.nope": 1}, PARAMS)


# ------------------------------------------------------------------------------ collection
def _row(miou: float) -> dict:
    """One architecture's entry of metrics/scores.json."""
    return {"miou": miou, "pixel_accuracy": 0.9, "iou": {"border": miou},
            "boundary_iou": miou / 2, "train_seconds": 10.0, "params": 1000}  # fmt: skip


def _exp(name: str, state: str, miou: float, **sets) -> dict:
    """One experiment as `dvc exp show --json` lists it (dvc 3.67)."""
    params = sweep._with(PARAMS, {**sweep.overrides("baseline"), **sets})
    scores = {a: _row(miou + i / 100) for i, a in enumerate(sweep.ARCHS)}
    data = {
        "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/scores.json": {"data": scores}},
    }
    error = {"msg": "Experiment run failed", "type": ""} if state == "failed" else None
    return {
        "name": name,
        "executor": {"state": state, "name": "dvc-task", "local": {}},
        "revs": [{"rev": "0" * 40, "name": name, "error": error, "data": data}],
    }


def _show(*experiments: dict) -> list[dict]:
    return [
        {"rev": "workspace", "name": None, "data": {}, "error": None},
        {"rev": "1" * 40, "name": "main", "data": {}, "error": None, "experiments": [*experiments]},
    ]


def test_collect_takes_the_successful_sweep_experiments_in_grid_order():
    show = _show(
        _exp("reg-dropout-s1", "success", 0.60, **sweep.ON["dropout"], **{"train.seed": 1}),
        _exp("reg-dropout-s0", "success", 0.50, **sweep.ON["dropout"]),
        _exp("reg-baseline-s0", "success", 0.40),
        _exp(
            "reg-all-s0", "failed", 0.99, **{k: v for o in sweep.ON.values() for k, v in o.items()}
        ),
        _exp("reg-augment-s0", "queued", 0.98, **sweep.ON["augment"]),
        _exp("tuning-lr", "success", 0.97, **{"train.lr": 0.1}),
    )
    rows = sweep.collect(sweep.parse_exp_show(show))
    assert [(r["experiment"], r["variant"], r["arch"], r["seed"]) for r in rows] == [
        ("reg-baseline-s0", "baseline", "strided", 0),
        ("reg-baseline-s0", "baseline", "unpool", 0),
        ("reg-baseline-s0", "baseline", "unet", 0),
        ("reg-baseline-s0", "baseline", "unet_noskip", 0),
        ("reg-dropout-s0", "dropout", "strided", 0),
        ("reg-dropout-s1", "dropout", "strided", 1),
        ("reg-dropout-s0", "dropout", "unpool", 0),
        ("reg-dropout-s1", "dropout", "unpool", 1),
        ("reg-dropout-s0", "dropout", "unet", 0),
        ("reg-dropout-s1", "dropout", "unet", 1),
        ("reg-dropout-s0", "dropout", "unet_noskip", 0),
        ("reg-dropout-s1", "dropout", "unet_noskip", 1),
    ]
    assert [r["miou"] for r in rows if r["arch"] == "unet"] == pytest.approx([0.42, 0.52, 0.62])


def test_collect_refuses_experiments_with_different_recipes(tmp_path):
    show = _show(
        _exp("reg-baseline-s0", "success", 0.4),
        _exp("reg-baseline-s1", "success", 0.4, **{"train.seed": 1, "train.threads": 2}),
        _exp("reg-dropout-s0", "success", 0.5, **sweep.ON["dropout"], **{"train.lr": 0.1}),
    )
    lr = re.escape(str(PARAMS["train"]["lr"]))
    with pytest.raises(sweep.SweepError, match=rf"train\.lr = 0\.1 vs {lr}.*dvc exp remove"):
        sweep.collect(sweep.parse_exp_show(show))
    show = _show(
        _exp("reg-dropout-s0", "success", 0.5, **sweep.ON["dropout"]),
        _exp("reg-dropout-s1", "success", 0.5, **dict.fromkeys(sweep.DROPOUT_KEYS, 0.5)),
    )
    with pytest.raises(sweep.SweepError, match=r"models\.strided\.dropout = 0\.5 vs 0\.2"):
        sweep.collect(sweep.parse_exp_show(show))


def test_collect_refuses_scores_that_do_not_match_the_schema():
    flat = _exp("reg-baseline-s0", "success", 0.4)
    rows = flat["revs"][0]["data"]["metrics"]["metrics/scores.json"]["data"]
    rows["unet"]["iou_border"] = rows["unet"].pop("iou")["border"]
    with pytest.raises(DataError) as err:
        sweep.collect(sweep.parse_exp_show(_show(flat)))
    message = str(err.value)
    assert message.startswith("experiment reg-baseline-s0 metrics/scores.json unet: ")
    assert "iou missing" in message
    assert "iou_border not expected" in message
    assert "dvc exp remove reg-baseline-s0" in message
    empty = _exp("reg-baseline-s0", "success", 0.4)
    empty["revs"][0]["data"]["metrics"] = {}
    with pytest.raises(sweep.SweepError, match="has no metrics/scores.json architectures"):
        sweep.collect(sweep.parse_exp_show(_show(empty)))


# -------------------------------------------------------------------------------- tracking
@pytest.fixture
def no_tracking_env(monkeypatch):
    """No MLFLOW_TRACKING_URI during the test, and none left after it: mlflow.set_tracking_uri
    exports the variable, so a plain delenv would let the test's store leak into later tests."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.setenv(var, "")  # remembers the original state for the teardown
        monkeypatch.delenv(var)


@pytest.fixture
def store(tmp_path, monkeypatch, no_tracking_env):
    """An empty project folder whose sqlite store the tracking helpers use."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def _only_run(root: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{root / tracking.STORE}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_store_is_switched_to_wal_and_a_racing_creation_finds_the_experiment(store, monkeypatch):
    import sqlite3

    tracking.Tracker("race", "unet", store, system_metrics=False).end()
    with sqlite3.connect(store / tracking.STORE) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Another process creates the experiment between our lookup and our create.
    monkeypatch.setattr(mlflow, "get_experiment_by_name", _none_once(mlflow.get_experiment_by_name))
    tracking.Tracker("race", "unpool", store, system_metrics=False).end()
    client = MlflowClient(f"sqlite:///{store / tracking.STORE}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["unet", "unpool"]


def _none_once(real):
    calls = []

    def lookup(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    return lookup


def test_a_busy_store_is_retried_and_other_errors_are_not(monkeypatch):
    monkeypatch.setattr(tracking, "RETRY_DELAYS", (0, 0))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)
        return "ok"

    assert tracking._retry(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise MlflowException("bad request")

    calls.clear()
    with pytest.raises(MlflowException, match="bad request"):
        tracking._retry(broken)
    assert len(calls) == 1


def test_failure_before_any_run_creates_a_failed_run_with_the_error(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "reg-x-s0")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with (
        pytest.raises(ParamsError),
        tracking.failures_recorded(config.TrackingParams(experiment="fail"), "strided"),
    ):
        raise ParamsError("params.yaml: train.label_smoothing = 1.5 is invalid")
    run = _only_run(store, "fail")
    assert run.info.status == "FAILED" and run.info.run_name == "strided-reg-x-s0"
    assert run.data.tags["petseg.error"] == (
        "ParamsError: params.yaml: train.label_smoothing = 1.5 is invalid"
    )
    assert run.data.tags["petseg.group"] == run.data.tags["dvc.exp_name"] == "reg-x-s0"
    assert run.data.tags["dvc.baseline"] == "a" * 40 and run.data.tags["petseg.arch"] == "strided"


@pytest.mark.parametrize("ended", [False, True], ids=["active", "ended-by-train"])
def test_failure_after_the_run_started_marks_that_run(store, ended):
    with (
        pytest.raises(RuntimeError),
        tracking.failures_recorded(config.TrackingParams(experiment="fail2"), "unet"),
    ):
        tracker = tracking.Tracker("fail2", "unet", store, system_metrics=False)
        if ended:
            tracker.end("FAILED")  # what train() does on its way out
        raise RuntimeError("loss is nan")
    run = _only_run(store, "fail2")
    assert run.info.status == "FAILED"
    assert run.data.tags["petseg.error"] == "RuntimeError: loss is nan"
    assert mlflow.active_run() is None


def test_stage_with_an_invalid_param_leaves_a_failed_run(tmp_path):
    params = {
        "train": {"label_smoothing": 1.5},
        "tracking": {"experiment": "bad", "system_metrics": False},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [
        sys.executable, str(ROOT / "stages/train.py"), "--arch", "unpool",
        "--params", "params.yaml", "--prepared", "nowhere", "--model", "m.pt",
        "--metrics", "m.json", "--plot", "p.csv", "--checkpoints", "ckpt",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "train.label_smoothing = 1.5 is invalid" in proc.stderr
    run = _only_run(tmp_path, "bad")
    assert run.info.status == "FAILED" and run.info.run_name == "unpool"
    assert "train.label_smoothing = 1.5 is invalid" in run.data.tags["petseg.error"]


# ------------------------------------------------------------------------ the real sweep
# On top of the shared tiny preset: what the assertions below read from the MLflow store.
SWEEP_EXTRA = {
    "tracking.system_metrics": True,  # its thread writes to the store too
    "tracking.log_model": True,
}
SWEPT = ["reg-baseline-s0", "reg-baseline-s1", "reg-dropout-s0", "reg-dropout-s1"]
BROKEN = "broken"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.2"  # tiny trainings last a second or two
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1500)
    assert not check or proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def _dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], cwd, check)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_preset):
    """A copy of the working tree in a fresh git+DVC repo, `dvc repro` on the tiny params, then a
    hand-queued broken experiment and `python -m petseg.sweep run` over two variants x two seeds
    with -j 2, `python -m petseg.sweep compare` over two seeds, then `dvc repro` for the report.
    Yields the project folder and the sweep output."""
    dest = tmp_path_factory.mktemp("sweep") / "petseg"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))
    tiny_preset(dest, SWEEP_EXTRA)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=dest, check=True)
    _dvc("repro", cwd=dest)  # the workspace results; the experiments reuse data via the run-cache
    try:
        _dvc("exp", "run", "--queue", "-n", BROKEN, "-S", "train.label_smoothing=1.5", cwd=dest)
        out = _run(
            [sys.executable, "-m", "petseg.sweep", "run", "--variants", "baseline", "dropout",
             "--seeds", "0", "1", "-j", "2", "--poll", "2"],
            dest,
        )  # fmt: skip
        _run(
            [sys.executable, "-m", "petseg.sweep", "compare", "--seeds", "0", "1", "-j", "2",
             "--poll", "2"],
            dest,
        )  # fmt: skip
        _dvc("repro", cwd=dest)
        yield dest, out.stdout
    finally:
        _dvc("queue", "stop", "--kill", cwd=dest, check=False)


def _exp_show(project: Path) -> list[sweep.Experiment]:
    return sweep.parse_exp_show(json.loads(_dvc("exp", "show", "--json", cwd=project).stdout))


def _runs(project: Path):
    client = MlflowClient(f"sqlite:///{project / tracking.STORE}")
    exp = client.get_experiment_by_name("petseg")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
def test_parallel_sweep_lands_every_run_in_the_one_store(swept, no_tracking_env):
    project, output = swept
    done = _exp_show(project)
    experiments = {e.name: e for e in done if e.state == "success" and e.name.startswith("reg-")}
    assert sorted(experiments) == sorted(SWEPT)
    for exp in experiments.values():
        assert set(exp.scores) == set(sweep.ARCHS)

    client, runs = _runs(project)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    parents = [r for r in runs if r.data.tags.get("petseg.parent") == "true"]
    runs = [r for r in runs if r not in parents]
    swept_runs = [r for r in runs if r.data.tags.get("dvc.exp_name") in SWEPT]
    assert sorted((r.data.tags["dvc.exp_name"], r.info.run_name) for r in swept_runs) == sorted(
        (name, f"{arch}-{name}") for name in SWEPT for arch in sweep.ARCHS
    )
    # One parent per experiment (named after it) holds its network runs and its report.
    by_name = {p.info.run_name: p.info.run_id for p in parents}
    assert set(SWEPT) <= set(by_name)
    for run in swept_runs:
        assert run.data.tags["mlflow.parentRunId"] == by_name[run.data.tags["dvc.exp_name"]]
    for run in swept_runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED", (tags["dvc.exp_name"], run.info.run_name)
        assert tags["dvc.baseline"] == head and tags["petseg.group"] == tags["dvc.exp_name"]
        assert f"{tags['petseg.arch']}-{tags['dvc.exp_name']}" == run.info.run_name
        assert any(k.startswith("system/") for k in run.data.metrics)  # the monitor thread logged
        assert run.data.params["train.seed"] == tags["dvc.exp_name"][-1]
    unet = next(r for r in swept_runs if r.data.tags["petseg.arch"] == "unet")
    assert served.load_logged_model(unet.info.run_id, project) is not None

    # The UI filters documented in the README.
    group = client.search_runs([unet.info.experiment_id], "tags.petseg.group = 'reg-dropout-s1'")
    archs = sorted(r.data.tags.get("petseg.arch", "(parent)") for r in group)
    assert archs == sorted(["(parent)", *sweep.ARCHS])
    across = client.search_runs(
        [unet.info.experiment_id], f"tags.petseg.arch = 'unet' and tags.dvc.baseline = '{head}'"
    )
    assert {r.data.tags["dvc.exp_name"] for r in across} >= set(SWEPT)

    # The workspace's own `dvc repro`: one group for its runs, one per network.
    repro = [r for r in runs if "dvc.exp_name" not in r.data.tags]
    assert len(repro) == len(sweep.ARCHS) and len({r.data.tags["petseg.group"] for r in repro}) == 1
    assert repro[0].data.tags["petseg.group"].startswith("repro-")

    logs = "".join(_dvc("queue", "logs", name, cwd=project).stdout for name in SWEPT)
    assert "Running stage 'train_unet'" in logs
    assert not re.search(r"database is locked|OperationalError|Traceback", logs)

    diff = json.loads(
        _dvc("plots", "diff", "reg-baseline-s0", "reg-dropout-s0", "--json", cwd=project).stdout
    )
    (curves,) = diff["data"]["Validation mIoU per epoch"]
    assert curves["revisions"] == ["reg-baseline-s0", "reg-dropout-s0"]
    revs = {row["rev"] for row in curves["content"]["data"]["values"]}
    assert revs == {"reg-baseline-s0", "reg-dropout-s0"}


@pytest.mark.slow
def test_a_failed_experiment_shows_in_dvc_and_mlflow_while_the_others_complete(swept):
    project, _ = swept
    states = {e.name: e.state for e in _exp_show(project)}
    assert states[BROKEN] == "failed"
    assert all(states[name] == "success" for name in SWEPT)
    status = _dvc("queue", "status", cwd=project).stdout
    assert re.search(rf"^\S+\s+{BROKEN}\s.*\bFailed\s*$", status, re.MULTILINE), status
    raw = json.loads(_dvc("exp", "show", "--json", cwd=project).stdout)
    (entry,) = [e for e in raw[1]["experiments"] if e["name"] == BROKEN]
    assert entry["revs"][0]["error"]["msg"] == "Experiment run failed"

    _, runs = _runs(project)
    failed = [r for r in runs if r.data.tags.get("dvc.exp_name") == BROKEN]
    assert [(r.info.run_name, r.info.status) for r in failed] == [(f"strided-{BROKEN}", "FAILED")]
    assert "train.label_smoothing = 1.5 is invalid" in failed[0].data.tags["petseg.error"]
    logs = _dvc("queue", "logs", BROKEN, cwd=project).stdout
    assert "train.label_smoothing = 1.5 is invalid" in logs


class _Tables(HTMLParser):
    """Text of each <table class=...> cell, by class."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
def test_report_regularization_table_equals_dvc_exp_show(swept):
    project, output = swept
    rows = len(SWEPT) * len(sweep.ARCHS)
    assert f"plots/experiments.csv: {rows} rows from {len(SWEPT)} experiments" in output
    show = json.loads(_dvc("exp", "show", "--json", cwd=project).stdout)
    miou: dict[tuple[str, str], list[float]] = {}
    for exp in show[1]["experiments"]:  # read here without petseg.sweep
        if exp["name"] in SWEPT and exp["executor"]["state"] == "success":
            scores = exp["revs"][0]["data"]["metrics"]["metrics/scores.json"]["data"]
            variant = exp["name"].split("-")[1]
            for arch, metrics in scores.items():
                miou.setdefault((variant, arch), []).append(metrics["miou"])
    expected = []
    for (variant, arch), values in miou.items():
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        expected.append([variant, arch, f"{mean:.4f} ± {std:.4f}", "2"])

    html = (project / "report/index.html").read_text(encoding="utf-8")
    table = _Tables(html).tables["regularization"]
    assert table[0] == ["Variant", "Architecture", "mIoU", "Runs"]
    assert sorted(table[1:]) == sorted(expected)
    n = len(sweep.ARCHS)
    assert [row[0] for row in table[1:]] == ["baseline"] * n + ["dropout"] * n
    assert (
        'id="regularization"' in html and (project / "report/figures/regularization.png").exists()
    )


# ---------------------------------------------------------------------------- make compare
def test_compare_plans_one_experiment_per_seed_with_the_recipe_as_it_is():
    planned = sweep.plan([sweep.RECIPE], [0, 2], {"train.epochs": 2}, PARAMS, prefix="cmp")
    assert [p.name for p in planned] == ["cmp-s0", "cmp-s2"]
    assert planned[1].sets == {"train.epochs": 2, "train.seed": 2}  # no regularizer switched
    # The recipe's own regularizers may be overridden for every seed alike.
    sweep.plan([sweep.RECIPE], [0], {"train.weight_decay": 0.0}, PARAMS, prefix="cmp")
    with pytest.raises(ParamsError, match="train.seed"):
        sweep.plan([sweep.RECIPE], [0], {"train.seed": 1}, PARAMS, prefix="cmp")


# Each cmp experiment's metrics/summary.json intervals (read from the DVC cache in a real run).
INTERVALS: dict[str, Intervals] = {}


def _cmp(seed: int, d: float) -> dict:
    exp = _exp(f"cmp-s{seed}", "success", 0.5 + d)
    params = sweep._with(PARAMS, {"train.seed": seed})
    exp["revs"][0]["data"]["params"]["params.yaml"]["data"] = params
    iv = {"low": d - 0.01, "high": d + 0.01}
    INTERVALS[exp["name"]] = Intervals.model_validate({
        "level": 0.95, "resamples": 100, "over": "8 test images",
        "miou": {a: {"low": 0.4, "high": 0.6} for a in sweep.ARCHS},
        "diff": {"strided-unpool": {"miou": iv, "iou": {"border": iv}, "boundary_iou": iv}},
    })  # fmt: skip
    return exp


def test_collect_seeds_gives_each_network_and_each_pair_per_seed():
    show = _show(_cmp(1, 0.02), _cmp(0, 0.03), _exp("reg-baseline-s0", "success", 0.4))
    rows, pairs = sweep.collect_seeds(
        sweep.parse_exp_show(show), intervals=lambda e: INTERVALS[e.name]
    )
    assert [(r["experiment"], r["arch"]) for r in rows][:2] == [
        ("cmp-s0", "strided"),
        ("cmp-s0", "unpool"),
    ]
    assert {r["seed"] for r in rows} == {0, 1} and len(rows) == 2 * len(sweep.ARCHS)
    assert set(rows[0]) == set(R.SEEDS_COLUMNS) and set(pairs[0]) == set(R.SEED_DIFFS_COLUMNS)
    first = [p for p in pairs if (p["a"], p["b"], p["metric"]) == ("strided", "unpool", "miou")]
    assert [p["seed"] for p in first] == [0, 1]
    assert first[0]["diff"] == pytest.approx(-0.01)  # strided 0.53 - unpool 0.54
    assert (first[0]["low"], first[0]["high"]) == pytest.approx((0.02, 0.04))
    no_interval = [p for p in pairs if (p["a"], p["b"]) == ("unet", "unet_noskip")]
    assert all(np.isnan(p["low"]) for p in no_interval)


@pytest.mark.slow
def test_compare_over_two_seeds_fills_the_across_seeds_section(swept):
    project, _ = swept
    seeds = R.read_csv(project / "plots/seeds.csv", R.SEEDS_COLUMNS)
    assert sorted(set(seeds["experiment"])) == ["cmp-s0", "cmp-s1"]
    assert len(seeds) == 2 * len(sweep.ARCHS) and set(seeds["seed"]) == {0, 1}
    diffs = R.read_csv(project / "plots/seed_diffs.csv", R.SEED_DIFFS_COLUMNS)
    pair = diffs[(diffs["a"] == "unet") & (diffs["b"] == "unet_noskip")]
    assert len(pair) == 2 * len(R.COMPARED) and (pair["low"] <= pair["high"]).all()
    section = (project / "report/README.md").read_text().split("## Across seeds", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "Across 2 training seeds (0, 1)" in section and " ± " in section
    assert "Do skip connections matter? Across seeds" in section


# ------------------------------------------------------------------------- transfer learning
def test_transfer_plans_the_own_encoder_once_and_each_backbone_with_both_starts():
    variants = sweep.transfer_variants(config.ENCODERS, list(sweep.INITS))
    assert variants == [
        ("scratch", "random"),
        ("resnet18", "imagenet"), ("resnet18", "random"),
        ("resnet34", "imagenet"), ("resnet34", "random"),
        ("mobilenet_v3_large", "imagenet"), ("mobilenet_v3_large", "random"),
    ]  # fmt: skip
    planned = sweep.plan_transfer("unet", variants[:3], [0], {"train.epochs": 2}, PARAMS)
    assert [p.name for p in planned] == [
        "tl-scratch-random-s0", "tl-resnet18-imagenet-s0", "tl-resnet18-random-s0",
    ]  # fmt: skip
    assert planned[1].sets == {
        "train.epochs": 2, "models.unet.encoder": "resnet18", "models.unet.pretrained": True,
        "train.seed": 0,
    }  # fmt: skip
    with pytest.raises(ParamsError, match="backbones fit strided, unet"):
        sweep.plan_transfer("unpool", variants, [0], {}, PARAMS)
    with pytest.raises(ParamsError, match=r"models\.unet\.weights_path: set by the transfer grid"):
        sweep.plan_transfer("unet", variants, [0], {"models.unet.weights_path": "w.pth"}, PARAMS)
    with pytest.raises(ParamsError, match=r"models\.unet\.depth = 6 .*at most 5 with encoder"):
        sweep.plan_transfer(
            "unet", variants[1:2], [0], {"models.unet.depth": 6, "preprocess.image_size": 128},
            PARAMS,
        )  # fmt: skip


# Each transfer experiment's metrics/summary.json (read from the DVC cache in a real run).
SUMMARIES: dict[str, Summary] = {}


def _summary_row(miou: float) -> ArchSummary:
    return ArchSummary(
        miou=miou, pixel_accuracy=0.9, mean_dice=0.8, binary_pet_iou=0.7,
        iou=dict.fromkeys(CLASSES, miou), train_seconds=10.0, inference_images_per_s=50.0,
        params=1000, gflops_per_image=0.1, boundary_iou=miou / 2, best_epoch=2, epochs=3,
        predicted={"pet": 0.3, "background": 0.6, "border": 0.1},
    )  # fmt: skip


def _tl(name: str, encoder: str, pretrained: bool, miou: float, **sets) -> dict:
    grid = {"models.unet.encoder": encoder, "models.unet.pretrained": pretrained}
    rows = {a: _summary_row(miou + i / 100) for i, a in enumerate(sweep.ARCHS)}
    SUMMARIES[name] = Summary(architectures=rows, best={})
    exp = _exp(name, "success", miou)
    exp["revs"][0]["data"]["params"]["params.yaml"]["data"] = sweep._with(PARAMS, {**grid, **sets})
    return exp


def test_collect_transfer_takes_the_swept_networks_with_their_encoder_and_weights():
    show = _show(
        _tl("tl-resnet18-random-s0", "resnet18", False, 0.50),
        _tl("tl-resnet18-imagenet-s0", "resnet18", True, 0.70),
        _tl("tl-scratch-random-s0", "scratch", False, 0.40),
        _exp("reg-baseline-s0", "success", 0.3),
    )
    rows = sweep.collect_transfer(
        sweep.parse_exp_show(show), "unet", summary=lambda e: SUMMARIES[e.name]
    )
    assert [(r["arch"], r["encoder"], r["pretrained"]) for r in rows] == [
        ("unet", "scratch", False), ("unet", "resnet18", False), ("unet", "resnet18", True),
        ("unet_noskip", "scratch", False), ("unet_noskip", "resnet18", False),
        ("unet_noskip", "resnet18", True),
    ]  # fmt: skip
    assert set(rows[0]) == set(R.TRANSFER_COLUMNS)
    assert [r["miou"] for r in rows[:3]] == pytest.approx([0.42, 0.52, 0.72])
    assert rows[0]["iou_border"] == pytest.approx(0.42) and rows[0]["params"] == 1000
    stale = _tl("tl-resnet34-random-s0", "resnet34", False, 0.5, **{"train.lr": 0.1})
    with pytest.raises(sweep.SweepError, match=r"train\.lr = 0\.1 vs .*dvc exp remove"):
        sweep.collect_transfer(
            sweep.parse_exp_show(_show(*show[1]["experiments"], stale)), "unet",
            summary=lambda e: SUMMARIES[e.name],
        )  # fmt: skip

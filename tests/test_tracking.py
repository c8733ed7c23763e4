"""What the stages log to MLflow, on a sqlite store in a temporary folder: the parent run of a
pipeline execution, run and model names, the experiment's view, the dataset input, test scores
onto the run and its logged model, the report into the parent, and the system-metrics pace."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from petseg import tracking
from petseg.config import TrackingParams

PARAMS = TrackingParams(experiment="t", system_metrics=False)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty project folder whose store the helpers use; no DVC or MLflow variables."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME",
                "DVC_EXP_BASELINE_REV", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):  # fmt: skip
        monkeypatch.setenv(var, "")  # restored after the test (set_tracking_uri exports it)
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def _client(root) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / tracking.STORE}")


def _runs(root, experiment="t"):
    client = _client(root)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id])


def test_outside_dvc_a_run_is_named_after_its_network_and_has_no_parent(store):
    tracking.Tracker("t", "unet", store, system_metrics=False).end()
    (run,) = _runs(store)
    assert run.info.run_name == "unet" and "mlflow.parentRunId" not in run.data.tags
    exp = _client(store).get_experiment_by_name("t")
    assert exp.tags[tracking.KIND_TAG] == "custom_model_development"


def test_a_run_killed_before_its_checkpoint_named_it_is_found_by_its_claim(store):
    # A kill between the run's creation and the checkpoint that would name it: the run stays
    # RUNNING, and the next attempt (run_id unknown, the claim in its checkpoint) resumes it.
    first = tracking.Tracker("t", "unet", store, system_metrics=False, claim="c0ffee")
    import mlflow

    mlflow.end_run()  # detach without ending it in the store, as a SIGKILL would
    _client(store).set_terminated(first.run_id, "RUNNING")
    again = tracking.Tracker("t", "unet", store, system_metrics=False, claim="c0ffee")
    assert again.resumed and again.run_id == first.run_id
    again.end()
    other = tracking.Tracker("t", "unet", store, system_metrics=False, claim="beef")
    assert not other.resumed
    other.end()
    assert sorted(r.info.status for r in _runs(store)) == ["FINISHED", "FINISHED"]


def test_an_ignored_checkpoint_that_named_no_run_ends_the_run_of_its_claim(store):
    killed = tracking.Tracker("t", "unet", store, system_metrics=False, claim="c0ffee")
    import mlflow

    mlflow.end_run()
    _client(store).set_terminated(killed.run_id, "RUNNING")  # what a SIGKILL leaves
    tracking.end_abandoned(PARAMS, None, "params changed", claim="other")
    assert _client(store).get_run(killed.run_id).info.status == "RUNNING"
    tracking.end_abandoned(PARAMS, None, "params changed", claim="c0ffee")
    run = _client(store).get_run(killed.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.ERROR_TAG] == "abandoned: params changed"


def test_a_store_whose_creation_was_stopped_is_not_left_behind(store, monkeypatch):
    # A Ctrl-C in the middle of MLflow's migrations used to leave a store that could never be
    # opened again ("table _alembic_tmp_experiments already exists").
    import sqlite3

    from mlflow.store.tracking import sqlalchemy_store

    def half_migrated(uri, artifact_root):
        sqlite3.connect(uri.removeprefix("sqlite:///")).execute(
            "CREATE TABLE _alembic_tmp_experiments (x)"
        )
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(sqlalchemy_store, "SqlAlchemyStore", half_migrated)
        with pytest.raises(KeyboardInterrupt):
            tracking.Tracker("t", "unet", store, system_metrics=False)
    assert not (store / tracking.STORE).exists() and list(store.glob(".mlflow.db.tmp-*")) == []
    tracking.Tracker("t", "unet", store, system_metrics=False).end()
    assert [r.info.status for r in _runs(store)] == ["FINISHED"]


def test_a_stop_inside_the_tracking_setup_waits_for_its_end(store):
    import os
    import signal

    from petseg import cli
    from petseg.errors import Stopped

    previous = cli.stop_on_signals()
    try:
        with pytest.raises(Stopped) as stopped, cli.stop_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            tracker = tracking.Tracker("t", "unet", store, system_metrics=False)
        assert stopped.value.signum == signal.SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert tracker.run_id  # the block ran to its end before the stop took effect
    tracker.end("KILLED")


def test_a_second_stop_inside_the_tracking_setup_stops_at_once():
    import os
    import signal

    from petseg import cli
    from petseg.errors import Stopped

    previous = cli.stop_on_signals()
    reached = []
    try:
        with pytest.raises(Stopped), cli.stop_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the first")
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the second")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert reached == ["after the first"]


def test_a_parent_left_running_by_a_kill_is_finished_by_the_next_run_of_its_group(
    store, monkeypatch
):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-low")
    tracking.Tracker("t", "strided", store, system_metrics=False).end()
    (parent,) = [r for r in _runs(store) if r.data.tags.get(tracking.PARENT_TAG)]
    _client(store).set_terminated(parent.info.run_id, "RUNNING")
    tracking.Tracker("t", "unet", store, system_metrics=False).end()
    assert {r.info.status for r in _runs(store)} == {"FINISHED"}


def test_runs_of_one_experiment_nest_under_one_parent_named_after_it(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-low")
    for arch in ("strided", "unet"):
        tracking.Tracker("t", arch, store, system_metrics=False).end()
    runs = _runs(store)
    parents = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == "true"]
    assert [p.info.run_name for p in parents] == ["lr-low"]
    assert parents[0].info.status == "FINISHED"
    children = sorted((r for r in runs if r not in parents), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in children] == ["strided-lr-low", "unet-lr-low"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # Another experiment gets a parent of its own.
    monkeypatch.setenv("DVC_EXP_NAME", "lr-high")
    tracking.Tracker("t", "unet", store, system_metrics=False).end()
    assert len([r for r in _runs(store) if r.data.tags.get(tracking.PARENT_TAG)]) == 2


def test_an_existing_experiment_gets_the_model_training_kind(store):
    client = _client(store)
    client.create_experiment("t", tags={tracking.KIND_TAG: "genai_development"})
    tracking.Tracker("t", "unet", store, system_metrics=False).end()
    assert client.get_experiment_by_name("t").tags[tracking.KIND_TAG] == tracking.KIND


def test_the_prepared_data_is_the_runs_training_dataset(store):
    tracker = tracking.Tracker("t", "unet", store, system_metrics=False)
    tracker.log_dataset("synthetic-64px", "0123456789abcdef", store / "data/prepared")
    tracker.end()
    (run,) = _runs(store)
    (entry,) = run.inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest) == ("synthetic-64px", "0123456789abcdef")
    assert json.loads(entry.dataset.source)["uri"] == (store / "data/prepared").as_uri()
    assert {(t.key, t.value) for t in entry.tags} >= {("mlflow.data.context", "training")}


def test_test_scores_go_onto_the_run_and_its_logged_model(store):
    import mlflow

    tracker = tracking.Tracker("t", "unet", store, system_metrics=False)
    model = mlflow.initialize_logged_model(name="unet", source_run_id=tracker.run_id)
    tracker.end()
    other = tracking.Tracker("t", "strided", store, system_metrics=False)
    other.end()
    scores = {
        "unet": (tracker.run_id, {"miou": 0.61, "iou.border": 0.3}),
        "strided": (other.run_id, {"miou": 0.5, "iou.border": 0.2}),
        "unpool": ("f" * 32, {"miou": 0.4, "iou.border": 0.1}),  # not in this store: skipped
    }
    tracking.record_test_scores(PARAMS, scores)
    client = _client(store)
    exp_id = client.get_experiment_by_name("t").experiment_id
    ranked = client.search_runs([exp_id], order_by=["metrics.`test/miou` DESC"])
    assert [r.info.run_name for r in ranked] == ["unet", "strided"]
    assert ranked[0].data.metrics["test/iou_border"] == pytest.approx(0.3)
    on_model = {m.key: m.value for m in client.get_logged_model(model.model_id).metrics}
    assert on_model == pytest.approx({"test/miou": 0.61, "test/iou_border": 0.3})


def test_nothing_is_logged_or_opened_with_tracking_off(store):
    off = TrackingParams(enabled=False)
    tracking.record_test_scores(off, {"unet": ("x", {"miou": 1.0})})
    assert tracking.publish_report(off, {"report": store}) is None
    assert not (store / tracking.STORE).exists()


def test_the_report_goes_into_the_parent_run_of_the_execution(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-low")
    unet = tracking.Tracker("t", "unet", store, system_metrics=False)
    unet.end()
    (store / "report").mkdir()
    (store / "report/index.html").write_text("<html></html>")
    (store / "summary.json").write_text("{}")
    parent = tracking.publish_report(
        PARAMS, {"report": store / "report", "metrics": store / "summary.json"}
    )
    client = _client(store)
    run = client.get_run(parent)
    assert run.info.run_name == "lr-low" and run.info.status == "FINISHED"
    assert run.info.end_time >= client.get_run(unet.run_id).info.end_time  # the whole execution
    assert {a.path for a in client.list_artifacts(parent)} == {"report", "metrics"}
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/index.html"]
    # Outside DVC there is no execution to group: nothing is logged.
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.publish_report(PARAMS, {"report": store / "report"}) is None


@pytest.mark.parametrize(("expected_s", "interval"), [(10.0, 0.5), (600.0, 2.0), (36000.0, 10.0)])
def test_system_metrics_are_sampled_at_a_pace_that_suits_the_training(
    store, monkeypatch, expected_s, interval
):
    seen = {}

    class Monitor:
        def __init__(self, run_id, sampling_interval, resume_logging, tracking_uri):
            seen.update(interval=sampling_interval, resume=resume_logging)

        def start(self):
            seen["started"] = seen.get("started", 0) + 1

        def finish(self):
            seen["finished"] = True

    monkeypatch.setattr(tracking, "SystemMetricsMonitor", Monitor)
    tracker = tracking.Tracker("t", "unet", store, system_metrics=True)
    tracker.sample_system(expected_s)
    tracker.sample_system(expected_s / 2)  # once per run: the first pace holds
    tracker.end()
    assert seen == {"interval": interval, "resume": False, "started": 1, "finished": True}
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = tracking.Tracker("t", "unet", store, system_metrics=True)
    tracker.sample_system(expected_s)
    tracker.end()
    assert seen["interval"] == 0.2


def test_the_ui_link_opens_the_experiments_runs_in_the_model_training_view(store):
    base = "http://127.0.0.1:5000"
    assert tracking.ui_url(base, "t") == base  # no store yet: the UI's home page
    tracking.Tracker("t", "unet", store, system_metrics=False).end()
    exp_id = _client(store).get_experiment_by_name("t").experiment_id
    assert tracking.ui_url(base, "t") == (
        f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    )
    assert tracking.ui_url(base, "other") == base

"""MLflow tracking: the only module that imports mlflow.

The store defaults to ``sqlite:///<project root>/mlflow.db`` (MLflow 3 deprecates the file
store) and ``MLFLOW_TRACKING_URI`` overrides it. The project root is ``DVC_ROOT`` when DVC runs
the stage (for a queued or ``--temp`` experiment DVC points it at the project that holds the
temporary copy under ``.dvc/tmp/exps/``), else the working directory, so every run lands in the one
store that ``make ui`` shows.

Concurrent writers (``dvc queue start -j N`` trains N models at once, each process writing its
metrics, system metrics and model to the same sqlite file): the store is switched to write-ahead
logging (WAL, a persistent property of the file), so readers never block the writer and writers
queue on one lock; MLflow waits up to 20 s for that lock (its ``busy_timeout``) and initialises a
new store under a file lock; and the few calls made here are retried when the store still reports
itself temporarily unavailable. Experiments created at the same moment by two processes resolve to
the same experiment.

The model a run logs is servable (``mlflow models serve``): :mod:`petseg.tracking.served`, kept
apart so that the stages that only log (evaluate, report) do not import the models.

Tags on every run: ``petseg.arch``, ``petseg.group`` (what groups the runs of one pipeline
execution: the DVC experiment name, or ``repro-<start>-<pid>`` of a plain ``dvc repro``),
``git.commit``, ``dvc.exp_name`` and ``dvc.baseline`` (set by DVC for experiments); a failed stage
adds ``petseg.error``, which a resumed run that finishes drops again.

Run states: FINISHED, FAILED (an error), KILLED (Ctrl-C, SIGTERM; and a run whose checkpoint a
later training ignored, which would otherwise stay RUNNING forever). A store that cannot be used
(not an MLflow database, locked for longer than ``tracking.wait_s``) is a
:class:`~petseg.errors.TrackingError` naming it and the ways out; ``tracking.enabled: false``
trains without any store (:class:`Untracked`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import itertools
import logging
import os
import re
import sqlite3
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import psutil
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from petseg.cli import stop_deferred
from petseg.config import TrackingParams
from petseg.errors import TrackingError
from petseg.fileio import create_once

log = logging.getLogger(__name__)

STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
# Seconds between retries of a call the store reported as temporarily unavailable (locked); the
# last is repeated until tracking.wait_s has passed.
RETRY_DELAYS = (1, 2, 4, 8, 15)
WAIT_S = TrackingParams().wait_s
ERROR_TAG = "petseg.error"
GROUP_TAG = "petseg.group"
PARENT_TAG = "petseg.parent"  # "true" on the run that holds one pipeline execution's runs
# A training's token, in its checkpoint before its run exists: a kill between the run's creation
# and the checkpoint that names it leaves a run the next attempt finds by this tag and resumes.
CLAIM_TAG = "petseg.claim"
# MLflow 3 opens an experiment in the view its kind names; without it the UI guesses, and an
# experiment of training runs can open in the GenAI view (traces, prompts).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# System metrics: about this many samples over a training, taken every 0.5-10 s (MLflow: 10 s).
SYSTEM_SAMPLES, SYSTEM_INTERVAL_S = 300, (0.5, 10.0)
# Test scores the evaluate stage adds to each network's training run and logged model.
TEST_METRICS = ("miou", "pixel_accuracy", "iou.pet", "iou.background", "iou.border",
                "boundary_iou", "mean_dice", "binary_pet_iou")  # fmt: skip
# MLflow limits tag values; an error message is cut to this many characters.
MAX_TAG = 5000

T = TypeVar("T")


@dataclasses.dataclass
class _Attempt:
    """What the innermost failures_recorded() block knows: the runs started inside it, and the
    claim of the training in it (:func:`claim`)."""

    started: list[str] = dataclasses.field(default_factory=list)
    claim: str | None = None


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("attempt", default=None)


def project_root(cwd: str | Path | None = None) -> Path:
    """The project directory: DVC's ``DVC_ROOT``, else ``cwd`` looking through DVC's temp copies."""
    if cwd is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    path = Path(cwd or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"augment": {"hflip": True}}} → {"train.augment.hflip": True}."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------ the store
class _Quiet(logging.Filter):
    """MLflow's store logs a traceback for every failed database call, before raising it to us;
    the stage reports the failure itself, in one line (TrackingError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


logging.getLogger("mlflow.store.db.utils").addFilter(_Quiet())


def _store_name(uri: str) -> str:
    """The sqlite file of a local store (what the user can move aside), else the URI."""
    if uri.startswith("sqlite:"):
        return make_url(uri).database or uri
    return uri


def _reason(exc: BaseException) -> str:
    """The line of a store error that says what happened (SQLAlchemy adds several around it)."""
    text = str(exc.message if isinstance(exc, MlflowException) else exc)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("(raised", "[", "(Back"))]
    first = re.sub(r"^\([\w.]+\) ", "", lines[0]) if lines else type(exc).__name__
    return first[:200]


def store_error(uri: str, exc: BaseException, wait_s: float) -> TrackingError:
    """One line naming the store, what is wrong with it and the ways out."""
    store, reason = _store_name(uri), _reason(exc)
    off = "or set tracking.enabled: false to train without MLflow"
    if "disk is full" in reason:
        return TrackingError(f"MLflow store {store}: {reason}: free space on its disk, {off}")
    if isinstance(exc, MlflowException) and _transient(exc):
        return TrackingError(
            f"MLflow store {store} stayed busy (locked) for more than tracking.wait_s = "
            f"{wait_s:g} s ({reason}): another process is holding it (a stuck training, a "
            f"script); stop that process, raise tracking.wait_s, {off}"
        )
    return TrackingError(
        f"MLflow store {store} is not usable ({reason}): move the file aside to start a new "
        f"store, point MLFLOW_TRACKING_URI at another one, {off}"
    )


@contextlib.contextmanager
def store_errors(uri: str, wait_s: float) -> Iterator[None]:
    """Turn what a broken or locked store raises into a :class:`TrackingError`."""
    try:
        yield
    except (MlflowException, SQLAlchemyError, sqlite3.Error) as exc:
        raise store_error(uri, exc, wait_s) from exc


def create_store(database: Path) -> None:
    """Create the sqlite store ``database`` whole or not at all, if it does not exist yet.

    MLflow creates its tables by running its migrations in the file, which takes a second or
    two; a Ctrl-C or a kill in the middle of that used to leave a store that MLflow can never
    open again (``table _alembic_tmp_experiments already exists``). Here the migrations run in a
    temporary sibling that is linked into place once complete (:func:`petseg.fileio.create_once`).
    """
    if database.exists():
        if database.stat().st_size:
            return
        database.unlink()  # empty: what sqlite3.connect left before it held any table

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def build(tmp: Path) -> None:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (database.parent / ARTIFACTS).as_uri())
        store.engine.dispose()  # the file is complete and closed before it is linked
        with contextlib.closing(sqlite3.connect(tmp)) as con:
            con.execute("PRAGMA journal_mode=WAL")

    with warnings.catch_warnings(), stop_deferred():
        warnings.simplefilter("ignore")  # SQLAlchemy deprecations inside MLflow's migrations
        if create_once(database, build):
            log.info("created the MLflow store %s", database)


def use_wal(uri: str, wait_s: float = WAIT_S) -> None:
    """Switch a sqlite store to write-ahead logging (kept by the file; other stores: no-op).

    In WAL mode readers and the one writer do not block each other, so the UI, a run's system
    metrics thread and parallel experiments can all use the file at once. A file that is not a
    database raises here, before MLflow tries to migrate it.
    """
    if not uri.startswith("sqlite:"):
        return
    database = make_url(uri).database
    if not database or database == ":memory:":
        return
    create_store(Path(database))
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=wait_s)) as con:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:  # busy: still usable in its mode, with more waiting
        log.warning("could not switch %s to WAL mode: %s", database, exc)


def _transient(exc: MlflowException) -> bool:
    # MLflow reports every sqlite OperationalError so; a full disk is not going to pass.
    busy = exc.error_code == ErrorCode.Name(TEMPORARILY_UNAVAILABLE)
    return busy and "disk is full" not in str(exc.message)


def _retry(call: Callable[..., T], *args: Any, wait_s: float = WAIT_S, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried for up to ``wait_s`` seconds while the store reports
    itself temporarily unavailable; then that error is raised."""
    deadline = time.monotonic() + wait_s
    for attempt in itertools.count():
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            left = deadline - time.monotonic()
            if not _transient(exc) or left <= 0:
                raise
            delay = min(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)], left)
            log.warning("MLflow store busy (%s); retrying in %.0f s", _reason(exc), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _connect(root: Path, experiment: str, wait_s: float = WAIT_S) -> str:
    """Point MLflow at the project's store; return the id of ``experiment`` (created if new)."""
    uri = tracking_uri(root)
    with store_errors(uri, wait_s):
        use_wal(uri, wait_s)
        mlflow.set_tracking_uri(uri)
        exp = _retry(mlflow.get_experiment_by_name, experiment, wait_s=wait_s)
        if exp is None:
            exp = _create_experiment(root, uri, experiment, wait_s)
        if exp.tags.get(KIND_TAG) != KIND:
            client = mlflow.MlflowClient()
            _retry(client.set_experiment_tag, exp.experiment_id, KIND_TAG, KIND, wait_s=wait_s)
        return exp.experiment_id


def _create_experiment(root: Path, uri: str, experiment: str, wait_s: float) -> Any:
    # With a local store keep artifacts inside the project; a server decides for itself.
    location = (root / ARTIFACTS).as_uri() if uri.startswith("sqlite:") else None
    try:
        _retry(mlflow.create_experiment, experiment, artifact_location=location, wait_s=wait_s)
    except MlflowException as exc:  # another process created it a moment ago
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    return _retry(mlflow.get_experiment_by_name, experiment, wait_s=wait_s)


# ----------------------------------------------------------------------------------- tags
def run_group() -> str | None:
    """The id shared by the runs of one pipeline execution.

    A DVC experiment (``dvc exp run``, queued or not) is named by DVC: that name. A plain
    ``dvc repro`` runs each stage in a child process with ``DVC_STAGE`` set; the nearest ancestor
    without it is that ``dvc`` process, whose start time and pid identify the execution. Outside
    DVC: None.
    """
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    if "DVC_STAGE" not in os.environ:
        return None
    try:
        for proc in psutil.Process().parents():
            if "DVC_STAGE" not in proc.environ():
                started = datetime.datetime.fromtimestamp(proc.create_time())
                return f"repro-{started:%Y%m%d-%H%M%S}-{proc.pid}"
    except psutil.Error as exc:
        log.warning("cannot identify the dvc process (%s): runs are not grouped", exc)
    return None


def base_tags(run_name: str, root: Path) -> dict[str, str]:
    """Tags of every run: architecture, group, git commit, DVC experiment and baseline."""
    tags = {"petseg.arch": run_name}
    group = run_group()
    if group:
        tags[GROUP_TAG] = group
    commit = _git_commit(root)
    if commit:
        tags["git.commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def display_name(arch: str) -> str:
    """A run's and its logged model's name: the network and the pipeline execution, e.g.
    ``unet-exp-3f2a1`` (``arch`` alone outside DVC)."""
    group = run_group()
    name = f"{arch}-{group}" if group else arch
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def parent_run(exp_id: str, root: Path, wait_s: float = WAIT_S) -> str | None:
    """The run that holds one pipeline execution (its group): its network runs nest under it and
    the report stage logs the report into it. Created, FINISHED, on first use; outside DVC
    (no group): None."""
    group = run_group()
    if group is None:
        return None
    client = mlflow.MlflowClient()
    query = f"tags.`{GROUP_TAG}` = '{group}' and tags.`{PARENT_TAG}` = 'true'"
    found = _retry(client.search_runs, [exp_id], query, max_results=1, wait_s=wait_s)
    if found:
        if found[0].info.status == "RUNNING":  # a kill came between its creation and its end
            _retry(client.set_terminated, found[0].info.run_id, "FINISHED", wait_s=wait_s)
        return found[0].info.run_id
    tags = {k: v for k, v in base_tags("", root).items() if k != "petseg.arch"}
    run = _retry(
        client.create_run, exp_id, run_name=group, tags={**tags, PARENT_TAG: "true"}, wait_s=wait_s
    )
    _retry(client.set_terminated, run.info.run_id, "FINISHED", wait_s=wait_s)
    return run.info.run_id


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 1] + "…"


# ------------------------------------------------------------------------------------ runs
def status_of(exc: BaseException) -> str:
    """The run status a training that raised ``exc`` ends with."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


class Tracker:
    """One MLflow run: start or resume, log params/metrics/model, end with a status."""

    def __init__(
        self,
        experiment: str,
        run_name: str,
        root: Path,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = True,
        wait_s: float = WAIT_S,
        claim: str | None = None,
    ) -> None:
        # A stop in the middle waits: a run half set up (or a half-imported MLflow module)
        # would leave the failure unrecordable.
        with stop_deferred():
            self._start(experiment, run_name, root, run_id, tags, system_metrics, wait_s, claim)

    def _start(
        self,
        experiment: str,
        run_name: str,
        root: Path,
        run_id: str | None,
        tags: Mapping[str, str] | None,
        system_metrics: bool,
        wait_s: float,
        claim: str | None,
    ) -> None:
        self.uri, self.wait_s = tracking_uri(root), wait_s
        self.system_metrics, self._monitor = system_metrics, None
        exp_id = _connect(root, experiment, wait_s)
        all_tags = {**base_tags(run_name, root), **(tags or {})}
        if claim is not None:
            all_tags[CLAIM_TAG] = claim
        with self.guarded():
            if run_id is not None and not self._exists(run_id):
                log.warning("run %s is not in %s: starting a new run", run_id, self.uri)
                run_id = None
            if run_id is None and claim is not None:
                run_id = claimed_run(mlflow.MlflowClient(), exp_id, claim, wait_s)
            self.resumed = run_id is not None
            if not self.resumed:
                parent = parent_run(exp_id, root, wait_s)
                if parent:
                    all_tags["mlflow.parentRunId"] = parent
            self.run = self._retry(
                mlflow.start_run,
                run_id=run_id,
                experiment_id=None if run_id else exp_id,
                run_name=None if run_id else display_name(run_name),
                tags=all_tags,
                log_system_metrics=False,  # started by sample_system() once the pace is known
            )
            self.run_id, self.name = self.run.info.run_id, self.run.info.run_name
            if ERROR_TAG in self.run.data.tags:  # the resumed run failed before: no longer true
                self._retry(mlflow.MlflowClient().delete_tag, self.run_id, ERROR_TAG)
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.started.append(self.run_id)

    def guarded(self) -> contextlib.AbstractContextManager[None]:
        """Store failures inside the block become one-line :class:`TrackingError` s."""
        return store_errors(self.uri, self.wait_s)

    def _exists(self, run_id: str) -> bool:
        """Whether the store holds ``run_id`` (a checkpoint may come from another store)."""
        try:
            self._retry(mlflow.MlflowClient().get_run, run_id)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            return False
        return True

    def _retry(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _retry(call, *args, wait_s=self.wait_s, **kwargs)

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: ("null" if v is None else v) for k, v in flatten(params).items()}
        with self.guarded():
            existing = self._retry(mlflow.get_run, self.run_id).data.params
            self._retry(mlflow.log_params, {k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        with self.guarded():
            self._retry(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)

    def log_dataset(self, name: str, digest: str, path: Path) -> None:
        """The prepared data as the run's training input (MLflow's Datasets column)."""
        with warnings.catch_warnings():  # two registered classes claim file URIs: same one
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        dataset = MetaDataset(source, name=name, digest=digest)
        with self.guarded():
            self._retry(mlflow.log_input, dataset, context="training")

    def sample_system(self, expected_s: float) -> None:
        """Start MLflow's system metrics, every ``expected_s`` / SYSTEM_SAMPLES seconds (within
        SYSTEM_INTERVAL_S; ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides), so that a short
        training gets a curve and a long one no flood. Once per run; no-op when off."""
        if not self.system_metrics or self._monitor is not None:
            return
        low, high = SYSTEM_INTERVAL_S
        interval = min(max(expected_s / SYSTEM_SAMPLES, low), high)
        env = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=float(env) if env else interval,
            resume_logging=self.resumed,
            tracking_uri=self.uri,
        )
        self._monitor.start()

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        with self.guarded():
            try:
                mlflow.end_run(status=status)
            except MlflowException as exc:
                if not _transient(exc):
                    raise
                # end_run had already let go of the run: finish it in the store directly.
                self._retry(mlflow.MlflowClient().set_terminated, self.run_id, status)


class Untracked:
    """The tracker of ``tracking.enabled: false``: no store is opened, every call does nothing."""

    run_id: str | None = None

    def guarded(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_dataset(self, name: str, digest: str, path: Path) -> None:
        pass

    def sample_system(self, expected_s: float) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def start(
    params: TrackingParams,
    run_name: str,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    claim: str | None = None,
) -> Tracker | Untracked:
    """The run of a training in the project's store (``run_id``: resume it; else the run tagged
    with ``claim``, if any), or none."""
    if not params.enabled:
        return Untracked()
    return Tracker(
        params.experiment,
        run_name,
        project_root(),
        run_id=run_id,
        tags=tags,
        system_metrics=params.system_metrics,
        wait_s=params.wait_s,
        claim=claim,
    )


def claimed_run(client: mlflow.MlflowClient, exp_id: str, claim: str, wait_s: float) -> str | None:
    """The run an attempt of a training created under ``claim`` (the token in its checkpoint),
    e.g. one killed before its checkpoint named the run; or None."""
    query = f"tags.`{CLAIM_TAG}` = '{claim}'"
    found = _retry(client.search_runs, [exp_id], query, max_results=1, wait_s=wait_s)
    return found[0].info.run_id if found else None


def end_abandoned(
    params: TrackingParams, run_id: str | None, reason: str, claim: str | None = None
) -> None:
    """End a run that a killed training left RUNNING and nothing will resume (its checkpoint
    was ignored) as KILLED, with the reason in ``petseg.error``; the run is the checkpoint's
    ``run_id``, or the one tagged with its ``claim`` (killed before the checkpoint named it)."""
    if not params.enabled:
        return
    uri = tracking_uri(project_root())
    with store_errors(uri, params.wait_s):
        use_wal(uri, params.wait_s)
        client = mlflow.MlflowClient(uri)
        if run_id is None and claim is not None:
            exp = _retry(client.get_experiment_by_name, params.experiment, wait_s=params.wait_s)
            if exp is not None:
                run_id = claimed_run(client, exp.experiment_id, claim, params.wait_s)
        if run_id is None:
            return
        try:
            run = _retry(client.get_run, run_id, wait_s=params.wait_s)
        except MlflowException:  # deleted, or from another store
            return
        if run.info.status != "RUNNING":
            return
        _retry(client.set_tag, run_id, ERROR_TAG, f"abandoned: {reason}", wait_s=params.wait_s)
        _retry(client.set_terminated, run_id, "KILLED", wait_s=params.wait_s)
    log.info("ended the MLflow run %s of the ignored checkpoint as KILLED", run_id)


def record_test_scores(
    params: TrackingParams, scores: Mapping[str, tuple[str, dict[str, float]]]
) -> None:
    """The evaluate stage's test scores (``arch -> (run id, {metric: value})``) into each
    network's training run, as ``test/<metric>``, and onto the model that run logged, so that
    the runs table sorts by ``metrics.`test/miou``` and the model page shows them. A run that is
    not in the store (trained elsewhere, or with tracking off) is skipped with a warning."""
    if not params.enabled or not scores:
        return
    uri, wait_s = tracking_uri(project_root()), params.wait_s
    with store_errors(uri, wait_s):
        use_wal(uri, wait_s)
        client = mlflow.MlflowClient(uri)
        for arch, (run_id, values) in scores.items():
            try:
                run = _retry(client.get_run, run_id, wait_s=wait_s)
            except MlflowException:
                log.warning("%s: its training run %s is not in %s: test scores not logged",
                            arch, run_id, _store_name(uri))  # fmt: skip
                continue
            models = _retry(client.search_logged_models, [run.info.experiment_id],
                            filter_string=f"source_run_id = '{run_id}'", wait_s=wait_s)  # fmt: skip
            model_id = models[0].model_id if models else None
            now = int(time.time() * 1000)
            metrics = [
                Metric(f"test/{k.replace('.', '_')}", float(v), now, 0, model_id=model_id)
                for k, v in values.items()
            ]
            _retry(client.log_batch, run_id, metrics=metrics, wait_s=wait_s)


def publish_report(params: TrackingParams, files: Mapping[str, Path]) -> str | None:
    """The report stage's files into the parent run of this pipeline execution (``artifact
    folder -> file or folder``); returns the parent's id (None: tracking off or outside DVC)."""
    if not params.enabled:
        return None
    root, wait_s = project_root(), params.wait_s
    uri = tracking_uri(root)
    with store_errors(uri, wait_s):
        exp_id = _connect(root, params.experiment, wait_s)
        parent = parent_run(exp_id, root, wait_s)
        if parent is None:
            return None
        client = mlflow.MlflowClient(uri)
        for folder, path in files.items():
            path = Path(path)
            if path.is_dir():
                _retry(client.log_artifacts, parent, str(path), folder, wait_s=wait_s)
            elif path.is_file():
                _retry(client.log_artifact, parent, str(path), folder, wait_s=wait_s)
        # The report ends the execution: the parent's duration is the pipeline's.
        _retry(client.set_terminated, parent, "FINISHED", wait_s=wait_s)
    return parent


def ui_url(base: str, experiment: str) -> str:
    """Where to open the MLflow UI: the experiment's runs in the model-training view. MLflow 3's
    UI starts in its GenAI view until the user switches (a browser setting); the link says
    which view (``workflowType``). ``base`` alone when the store has no such experiment yet."""
    uri = tracking_uri(project_root())
    try:
        found = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # no store yet, or one mlflow ui will report itself: just the base URL
        return base
    if found is None:
        return base
    return f"{base}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


@contextlib.contextmanager
def failures_recorded(params: TrackingParams, run_name: str) -> Iterator[None]:
    """Around a training stage: an exception leaves a visible FAILED (or KILLED) run in MLflow.

    The run started inside the block (:func:`petseg.train.train` ends it) gets the error in the
    tag ``petseg.error``; when the stage failed before starting one (an invalid param, missing
    data), a run with the usual tags and the error is created, so a failed DVC experiment never
    shows up as a silent gap. Only the main process of a DDP job records (``RANK`` 0); nothing is
    recorded without tracking or when the store itself failed, and a store that cannot be reached
    only adds a warning to the original error.
    """
    attempt = _Attempt()
    token = _ATTEMPT.set(attempt)
    try:
        yield
    except BaseException as exc:
        main = int(os.environ.get("RANK", "0")) == 0
        if main and params.enabled and not isinstance(exc, TrackingError):
            try:
                with stop_deferred():  # a second Ctrl-C waits for the record
                    _record_failure(params, run_name, exc, attempt)
            except Exception as record_exc:
                log.warning("could not record the failure in MLflow: %s", _reason(record_exc))
        raise
    finally:
        _ATTEMPT.reset(token)


def claim(token: str) -> None:
    """A training's claim (in its checkpoint): a run that records its failure before its own
    run started carries it, so that the training's next attempt resumes that run."""
    attempt = _ATTEMPT.get()
    if attempt is not None:
        attempt.claim = token


def _record_failure(
    params: TrackingParams, run_name: str, exc: BaseException, attempt: _Attempt
) -> None:
    run_id = attempt.started[-1] if attempt.started else None
    error, status, wait_s = _error_text(exc), status_of(exc), params.wait_s
    if run_id is not None:
        _retry(mlflow.MlflowClient().set_tag, run_id, ERROR_TAG, error, wait_s=wait_s)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:  # failed before train()'s loop
            mlflow.end_run(status=status)
        return
    root = project_root()
    exp_id = _connect(root, params.experiment, wait_s)
    client = mlflow.MlflowClient()
    tags = {**base_tags(run_name, root), ERROR_TAG: error}
    if attempt.claim is not None:
        tags[CLAIM_TAG] = attempt.claim
    name = display_name(run_name)
    created = _retry(client.create_run, exp_id, tags=tags, run_name=name, wait_s=wait_s)
    _retry(client.set_terminated, created.info.run_id, status, wait_s=wait_s)

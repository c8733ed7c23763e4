"""MLflow tracking: the only module that imports mlflow.

The store defaults to ``sqlite:///<project root>/mlflow.db`` (MLflow 3 deprecates the file
store) and ``MLFLOW_TRACKING_URI`` overrides it. The project root is found from the working
directory, and when DVC runs an experiment in a temporary copy (``.dvc/tmp/exps/...``) the root is
the project that holds that copy, so every run lands in the one store that ``make ui`` shows.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.models import infer_signature

STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"


def project_root(cwd: str | Path | None = None) -> Path:
    """The project directory, looking through DVC's temporary experiment copies."""
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
    ) -> None:
        uri = tracking_uri(root)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            # With a local store keep artifacts inside the project; a server decides for itself.
            location = (root / ARTIFACTS).as_uri() if uri.startswith("sqlite:") else None
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        all_tags = {"petseg.arch": run_name}
        commit = _git_commit(root)
        if commit:
            all_tags["git.commit"] = commit
        for env, tag in (
            ("DVC_EXP_NAME", "dvc.exp_name"),
            ("DVC_EXP_BASELINE_REV", "dvc.baseline"),
        ):
            if os.environ.get(env):
                all_tags[tag] = os.environ[env]
        all_tags.update(tags or {})
        self.run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else exp_id,
            run_name=None if run_id else run_name,
            tags=all_tags,
            log_system_metrics=system_metrics,
        )
        self.run_id = self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: ("null" if v is None else v) for k, v in flatten(params).items()}
        existing = mlflow.get_run(self.run_id).data.params
        mlflow.log_params({k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """Log ``model`` (CPU, eval mode) with a signature inferred from ``example``."""
        model = model.cpu().eval()
        with torch.no_grad():
            out = model(example)
        signature = infer_signature(example.numpy(), out.numpy())
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )

    def end(self, status: str = "FINISHED") -> None:
        mlflow.end_run(status=status)


def load_logged_model(run_id: str, root: Path) -> torch.nn.Module:
    """Load the model logged by :meth:`Tracker.log_model` in run ``run_id``."""
    mlflow.set_tracking_uri(tracking_uri(root))
    return mlflow.pytorch.load_model(f"runs:/{run_id}/model")

"""The model a training run logs: a servable MLflow pyfunc (``mlflow models serve``).

:class:`ServedModel` hands every call to :mod:`petseg.serving`, which imports no mlflow and
nothing of training. Apart from :mod:`petseg.tracking` so that the stages that only log scores
or a report do not import the networks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from petseg import serving
from petseg.tracking import Tracker, Untracked, tracking_uri


def log_model(tracker: Tracker | Untracked, model_file: Path) -> None:
    """Log the servable model of ``model_file`` (``models/<arch>.pt``) in the tracker's run,
    named like the run: a pyfunc (:class:`ServedModel`) with the file as its artifact and
    petseg's code, so that ``mlflow models serve`` needs only the pinned requirements."""
    if isinstance(tracker, Untracked):
        return
    with tracker.guarded():
        mlflow.pyfunc.log_model(
            name=tracker.name,
            python_model=ServedModel(),
            artifacts={serving.ARTIFACT: str(model_file)},
            code_paths=[str(Path(serving.__file__).parent)],
            signature=model_signature(),
            input_example=(EXAMPLE, {"probabilities": False}),
            pip_requirements=serving.requirements(),
            metadata=serving.metadata(model_file),
        )


class ServedModel(mlflow.pyfunc.PythonModel):
    """The pyfunc that ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run.

    Here because only petseg.tracking imports mlflow; it holds no logic (:mod:`petseg.serving` does)
    and no state when MLflow pickles it, so the pickle only names this class: loading it runs
    nothing but petseg's own code, which the model carries (``code_paths``)."""

    def load_context(self, context: Any) -> None:
        self.segmenter = serving.load(context.artifacts[serving.ARTIFACT])

    # np.ndarray: a type hint MLflow infers no schema from, so the logged signature rules
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> Any:
        return serving.predict(self.segmenter, model_input, **(params or {}))


# A photo of any size (the height and width are free in the signature); zeros keep it small.
EXAMPLE = np.zeros((1, 24, 40, 3), dtype=np.uint8)


def model_signature() -> ModelSignature:
    """uint8 RGB batches of any height and width in, class maps of the same size out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
        params=ParamSchema([ParamSpec("probabilities", "boolean", False)]),
    )


def model_uri(run_id: str, root: Path) -> str:
    """``models:/<id>`` of the model that run ``run_id`` logged (in the project's store)."""
    mlflow.set_tracking_uri(tracking_uri(root))
    client = mlflow.MlflowClient()
    exp_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}'")
    if not found:
        raise LookupError(f"run {run_id} logged no model")
    return f"models:/{found[0].model_id}"


def load_logged_model(run_id: str, root: Path) -> Any:
    """The pyfunc model logged by :func:`log_model` in run ``run_id``."""
    return mlflow.pyfunc.load_model(model_uri(run_id, root))

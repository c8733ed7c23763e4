"""``models/<arch>.pt``: the file a trained network is saved in and rebuilt from.

A dict of plain types and tensors, so it loads with ``torch.load(weights_only=True)`` (no pickled
code runs): the architecture's name and ``models.<arch>`` params, the classes in channel order, the
training image size and the weights. Training writes it with :func:`save_model`; evaluation and
anything that predicts read it with :func:`load_model`, without importing the training stack.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from petseg import CLASSES, NUM_CLASSES
from petseg.config import ARCH_SECTIONS, ArchParams, ModelsParams
from petseg.errors import DataError
from petseg.fileio import atomic_file
from petseg.models.blocks import SegmentationModel
from petseg.models.registry import build_model

RETRAIN = "pass a models/<arch>.pt written by a train stage, or retrain it (dvc repro)"
KEYS = ("arch", "params", "num_classes", "classes", "image_size", "state_dict")


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about its network, besides the weights."""

    arch: str
    params: dict[str, Any]  # models.<arch> as trained
    num_classes: int
    classes: tuple[str, ...]  # class of each output channel
    image_size: int  # side of the square training images
    run_id: str | None = None  # the MLflow run that trained it (absent: tracking was off)


def save_model(
    path: Path,
    arch: str,
    arch_params: ArchParams,
    image_size: int,
    state_dict: Mapping[str, torch.Tensor],
    run_id: str | None = None,
) -> None:
    """Write ``models/<arch>.pt`` atomically (streamed: no in-memory copy of the weights);
    ``run_id``: the MLflow run that trained it, where evaluate logs its test scores."""
    with atomic_file(path) as fh:
        torch.save(
            {
                "arch": arch,
                "params": arch_params.model_dump(),
                "num_classes": NUM_CLASSES,
                "classes": list(CLASSES),
                "image_size": image_size,
                "state_dict": dict(state_dict),
                **({"mlflow_run_id": run_id} if run_id else {}),
            },
            fh,
        )


def load_model(path: str | Path) -> tuple[SegmentationModel, ModelInfo]:
    """The network saved in ``path``, rebuilt in eval mode on the CPU, and what the file says."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run its train stage (dvc repro)") from None
    except Exception as exc:  # torn file, foreign pickle: torch raises many kinds
        raise DataError(f"{path} is not a petseg model file ({_why(exc)}): {RETRAIN}") from None
    missing = [k for k in KEYS if not isinstance(blob, dict) or k not in blob]
    if missing:
        raise DataError(f"{path} is not a petseg model file (no {', '.join(missing)}): {RETRAIN}")
    arch = blob["arch"]
    try:
        models = ModelsParams.model_validate({ARCH_SECTIONS[arch]: blob["params"]})
    except (KeyError, ValidationError) as exc:
        raise DataError(f"{path}: not a model this version can build ({exc})") from None
    model = build_model(arch, models, blob["num_classes"])
    model.load_state_dict(blob["state_dict"])
    info = ModelInfo(
        arch, blob["params"], blob["num_classes"], tuple(blob["classes"]), blob["image_size"],
        run_id=blob.get("mlflow_run_id"),
    )  # fmt: skip
    return model.eval(), info


def _why(exc: Exception) -> str:
    """One line on why ``torch.load`` refused a file (its own messages run to paragraphs)."""
    text = str(exc)
    if "Unsupported global" in text:  # a pickle of classes (a whole nn.Module, say)
        return "it pickles Python objects, which petseg never unpickles"
    if isinstance(exc, pickle.UnpicklingError) or "Unsupported operand" in text:
        return "not a file that torch.save wrote"
    first = next(iter(text.splitlines()), "")
    return f"torch.load: {type(exc).__name__} {first[:120]}".rstrip()

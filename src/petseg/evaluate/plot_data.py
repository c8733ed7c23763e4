"""The tables behind the DVC plots of the test set (``plots/eval/*.csv``, columns from
:mod:`petseg.results`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from petseg import CLASSES
from petseg import results as R
from petseg.results import TestMetrics


def confusion_rows(arch: str, res: TestMetrics) -> list[dict]:
    """Pixels and share of each actual class predicted as each class."""
    cm = np.asarray(res.confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    return [
        {"arch": arch, "actual": actual, "predicted": predicted, "pixels": int(cm[t, p]),
         "fraction": float(cm[t, p] / max(rows[t, 0], 1))}
        for t, actual in enumerate(CLASSES)
        for p, predicted in enumerate(CLASSES)
    ]  # fmt: skip


def runtime_row(arch: str, res: TestMetrics) -> dict:
    return {
        "arch": arch,
        "train_seconds": float(res.train_seconds),
        "train_images_per_s": float(res.train_images_per_s),
        "inference_images_per_s": float(res.inference_images_per_s),
        "gflops_per_image": float(res.gflops_per_image),
        "params": int(res.params),
    }


def write_plot_data(
    out: Path,
    tests: Mapping[str, TestMetrics],
    per_image: Mapping[str, np.ndarray],
    names: list[str],
) -> None:
    """confusion.csv, per_class.csv, runtime.csv and per_image.csv (one mIoU per test image)."""
    confusion = [row for arch, res in tests.items() for row in confusion_rows(arch, res)]
    per_class = [
        {"arch": arch, "class": c, "iou": res.iou[c], "dice": res.dice[c]}
        for arch, res in tests.items()
        for c in CLASSES
    ]
    runtime = [runtime_row(arch, res) for arch, res in tests.items()]
    images = [
        {R.PER_IMAGE_INDEX: name, **{a: float(v[i]) for a, v in per_image.items()}}
        for i, name in enumerate(names)
    ]
    R.write_csv(out / "confusion.csv", R.CONFUSION_COLUMNS, confusion)
    R.write_csv(out / "per_class.csv", R.PER_CLASS_COLUMNS, per_class)
    R.write_csv(out / "runtime.csv", R.RUNTIME_COLUMNS, runtime)
    R.write_csv(out / "per_image.csv", (R.PER_IMAGE_INDEX, *per_image), images)

"""Segmentation scores as pure functions of a confusion matrix.

As in torchvision's segmentation references, a dataset-wide confusion matrix is accumulated with one
``bincount`` per batch and every score derives from it, so scores are exact over the whole dataset
(not means of per-batch scores) and can be summed across processes before scoring.

Convention: ``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p``. A class that appears
neither in the ground truth nor in the predictions has an undefined IoU/Dice (NaN) and is left out
of the means, rather than counted as 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """(C, C) int64 counts of ``target`` (rows) vs ``pred`` (columns); ``ignore_index`` skipped."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _np(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    return cm.cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)


def pixel_accuracy(cm: torch.Tensor | np.ndarray) -> float:
    cm = _np(cm).astype(np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def iou_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN where the class is absent from truth and prediction.

    ``cm`` is one (C, C) matrix or a stack (..., C, C) of them (e.g. one per image, or bootstrap
    replicates); the result is (C,) or (..., C)."""
    cm = _np(cm).astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-2) + cm.sum(-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """2 TP / (2 TP + FP + FN) per class; NaN where the class is absent from truth and prediction.

    Returned in the same order as :func:`iou_per_class`.
    """
    cm = _np(cm).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def mean_iou(cm: torch.Tensor | np.ndarray) -> Any:
    """Mean IoU over the classes with a defined IoU: a float for one (C, C) matrix, an array
    (...,) for a stack (..., C, C); NaN where no class is defined."""
    iou = iou_per_class(cm)
    ok = np.isfinite(iou)
    mean = np.where(ok, iou, 0.0).sum(-1) / np.maximum(ok.sum(-1), 1)
    mean = np.where(ok.any(-1), mean, np.nan)
    return float(mean) if mean.ndim == 0 else mean

"""Scores of confusion matrices, per image and over bootstrap resamples of the test images."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from petseg import CLASSES, NUM_CLASSES
from petseg.metrics import dice_per_class, iou_per_class, mean_iou, pixel_accuracy
from petseg.results import COMPARED, Intervals, Scores, pair_key


def binary_pet_iou(cm: np.ndarray) -> float:
    """Pet vs rest IoU from a 3-class confusion matrix, ground-truth border ignored.

    Comparable with published foreground/background numbers: the border band straddles the
    outline and is neither pet nor background by definition; predicting border counts as not pet.
    """
    tp = cm[0, 0]
    fn = cm[0, 1] + cm[0, 2]
    fp = cm[1, 0]
    return float(tp / (tp + fn + fp)) if tp + fn + fp else float("nan")


def scores(cm: torch.Tensor | np.ndarray) -> Scores:
    """Every score of one dataset-wide confusion matrix (each a pure function of it)."""
    cm = cm.numpy() if isinstance(cm, torch.Tensor) else cm
    iou, dice = iou_per_class(cm), dice_per_class(cm)
    return Scores(
        pixel_accuracy=pixel_accuracy(cm),
        miou=mean_iou(cm),
        iou={c: float(iou[i]) for i, c in enumerate(CLASSES)},
        mean_dice=float(np.nanmean(dice)),
        dice={c: float(dice[i]) for i, c in enumerate(CLASSES)},
        binary_pet_iou=binary_pet_iou(cm),
        confusion=cm.tolist(),
    )


def per_image_confusion(pred: np.ndarray, masks: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, C, C) int64: the confusion matrix of every test image (``cm[i, t, p]``, as
    :func:`petseg.metrics.confusion_matrix`); labels outside the classes are skipped like there.

    Their sum over images is the dataset-wide matrix; resampling images with replacement and
    summing gives the bootstrap replicates of :func:`bootstrap_intervals`."""
    c, n = NUM_CLASSES, len(pred)
    out = np.zeros((n, c, c), dtype=np.int64)
    for lo in range(0, n, chunk):  # bounded memory: one index array per chunk of images
        t = masks[lo : lo + chunk].reshape(min(chunk, n - lo), -1).astype(np.int64)
        p = pred[lo : lo + chunk].reshape(t.shape).astype(np.int64)
        rows = np.arange(len(t))[:, None] * (c * c)
        idx = np.where((t >= 0) & (t < c), rows + t * c + p, -1)
        counts = np.bincount(idx[idx >= 0], minlength=len(t) * c * c)
        out[lo : lo + len(t)] = counts.reshape(len(t), c, c)
    return out


def per_image_miou(pred: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """mIoU of every image (classes absent from both truth and prediction left out)."""
    return mean_iou(per_image_confusion(pred, masks))


BOUNDARY_FRACTION = 0.02  # Boundary IoU's band: 2 % of the image diagonal (Cheng et al. 2021)


def boundary_width(height: int, width: int, fraction: float = BOUNDARY_FRACTION) -> int:
    """Pixels of the boundary band for an image of this size (at least one)."""
    return max(1, round(fraction * math.hypot(height, width)))


def _inner_band(mask: torch.Tensor, d: int) -> torch.Tensor:
    """The pixels of a (N, H, W) boolean ``mask`` within ``d`` of its contour: the mask minus its
    erosion by a (2d+1)-square. Outside the image counts as outside the mask (zero padding, as the
    reference implementation pads), so a mask touching the border has a contour there."""
    outside = F.pad((~mask).float()[:, None], (d, d, d, d), value=1.0)
    eroded = F.max_pool2d(outside, 2 * d + 1, stride=1)[:, 0] == 0
    return mask & ~eroded


def boundary_counts(
    pred: np.ndarray, masks: np.ndarray, cls: int = 0, chunk: int = 64
) -> np.ndarray:
    """(N, 2) int64: per image, the intersection and the union of the true and the predicted
    boundary bands of class ``cls`` (the pet by default): the terms of Boundary IoU (Cheng et al.,
    CVPR 2021), IoU restricted to pixels within d of each mask's contour, d =
    :func:`boundary_width` of the image. It measures outlines, where skip connections should
    matter, which region IoU of large interiors hides. Sum over images, then divide."""
    n = len(pred)
    out = np.zeros((n, 2), dtype=np.int64)
    if n == 0:
        return out
    d = boundary_width(*masks.shape[1:3])
    for lo in range(0, n, chunk):
        truth = torch.from_numpy(np.asarray(masks[lo : lo + chunk]) == cls)
        guess = torch.from_numpy(np.asarray(pred[lo : lo + chunk]) == cls)
        t, p = _inner_band(truth, d), _inner_band(guess, d)
        out[lo : lo + len(t), 0] = (t & p).sum((1, 2)).numpy()
        out[lo : lo + len(t), 1] = (t | p).sum((1, 2)).numpy()
    return out


def boundary_iou(counts: np.ndarray) -> np.ndarray | float:
    """Boundary IoU of summed (..., N, 2) counts (NaN where both bands are empty)."""
    inter, union = counts[..., 0], counts[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(value) if np.ndim(value) == 0 else value


def _metric(metric: str, cms: np.ndarray, boundary: np.ndarray | None) -> np.ndarray | None:
    """``metric`` of each of a stack of confusion matrices (and their boundary counts)."""
    if metric == "miou":
        return mean_iou(cms)
    if metric == "boundary_iou":
        return None if boundary is None else boundary_iou(boundary)
    kind, cls = metric.split(".")
    assert kind == "iou", metric  # COMPARED names only these kinds
    return iou_per_class(cms)[:, CLASSES.index(cls)]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"iou.border": x}`` → ``{"iou": {"border": x}}``: the layout of the results records."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def bootstrap_intervals(
    cms: dict[str, np.ndarray],
    resamples: int,
    level: float = 0.95,
    seed: int = 0,
    boundary: dict[str, np.ndarray] | None = None,
) -> Intervals:
    """Paired percentile-bootstrap intervals over test images, for the report's comparisons.

    ``cms``: arch -> (N, C, C) per-image confusion matrices of the same N test images
    (``boundary``: arch -> their (N, 2) :func:`boundary_counts`, optional). Each of ``resamples``
    replicates draws N images with replacement (one draw shared by every architecture: the
    comparisons are paired) and rescores the summed counts. Returns the ``level`` interval of each
    architecture's mIoU and, for every pair (a before b in the order of ``cms``), of the
    differences a - b in the :data:`~petseg.results.COMPARED` metrics. It measures how much the
    scores depend on which test images were drawn, not how much a second training seed would move
    them. Deterministic for a ``seed``.
    """
    archs = list(cms)
    n = len(cms[archs[0]])
    metrics = [m for m in COMPARED if m != "boundary_iou" or boundary is not None]
    rng = np.random.default_rng(seed)
    stats: dict[str, dict[str, list[np.ndarray]]] = {a: {m: [] for m in metrics} for a in archs}
    for lo in range(0, resamples, 250):  # (chunk, N) weights at a time: bounded memory
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, resamples - lo))
        weights = draws.astype(np.float64)  # counts stay exact in float64; products run on BLAS
        for a in archs:
            flat = cms[a].reshape(n, -1).astype(np.float64)
            totals = (weights @ flat).reshape(-1, *cms[a].shape[1:])
            bands = None if boundary is None else weights @ boundary[a].astype(np.float64)
            for m in metrics:
                stats[a][m].append(_metric(m, totals, bands))
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: np.ndarray) -> dict[str, float]:
        low, high = np.nanpercentile(values, tails) if np.isfinite(values).any() else (np.nan,) * 2
        return {"low": float(low), "high": float(high)}

    joined = {a: {m: np.concatenate(v) for m, v in s.items()} for a, s in stats.items()}
    diff = {
        pair_key(a, b): _nest({m: interval(joined[a][m] - joined[b][m]) for m in metrics})
        for i, a in enumerate(archs)
        for b in archs[i + 1 :]
    }
    return Intervals.model_validate(
        {
            "level": level,
            "resamples": resamples,
            "over": f"{n} test images",
            "miou": {a: interval(joined[a]["miou"]) for a in archs},
            "diff": diff,
        }
    )

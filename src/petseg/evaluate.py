"""The ``evaluate`` stage: test-set scores, runtime, DVC plot data, prediction grids, COCO export.

For every trained architecture one dataset-wide confusion matrix is accumulated on the test split
(at the network's resolution and, with ``evaluate.original_resolution``, at each test image's own
size: logits are upsampled bilinearly and compared with the original trimap). Every score is a pure
function of that matrix (:mod:`petseg.metrics`).

Binary pet-vs-rest IoU, to compare with published foreground/background numbers: ground-truth
border pixels are ignored (the border band straddles the outline and is neither pet nor background
by definition); a prediction of "border" counts as "not pet".
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image

from petseg import CLASSES, ERROR_COLOUR, NUM_CLASSES
from petseg import PALETTE as CLASS_COLOURS
from petseg.config import EvaluateParams
from petseg.data import coco
from petseg.data.augment import normalize, to_float
from petseg.data.oxford import trimap_path, trimap_to_labels
from petseg.data.prepared import load_split, read_manifest
from petseg.engine import autocast
from petseg.errors import DataError
from petseg.fileio import atomic_dir, atomic_write_bytes, atomic_write_json
from petseg.metrics import confusion_matrix, dice_per_class, iou_per_class, mean_iou, pixel_accuracy
from petseg.models import fuse_for_inference
from petseg.train import load_trained

PALETTE = np.array(CLASS_COLOURS, dtype=np.uint8)


@dataclass(frozen=True)
class EvalPaths:
    prepared: Path  # data/prepared
    raw: Path  # data/raw (original trimaps for the original-resolution scores)
    models: dict[str, Path]  # arch -> models/<arch>.pt
    train_metrics: dict[str, Path]  # arch -> metrics/train/<arch>.json
    metrics_dir: Path  # metrics/test/<arch>.json
    summary: Path  # metrics/summary.json
    plots: Path  # plots/eval: confusion.csv, runtime.csv, per_class.csv, per_image.csv
    predictions: Path  # plots/predictions/*.png
    coco: Path  # data/coco: ground truth and per-architecture results


def binary_pet_iou(cm: np.ndarray) -> float:
    """Pet vs rest IoU from a 3-class confusion matrix, ground-truth border ignored."""
    tp = cm[0, 0]
    fn = cm[0, 1] + cm[0, 2]
    fp = cm[1, 0]
    return float(tp / (tp + fn + fp)) if tp + fn + fp else float("nan")


def scores(cm: torch.Tensor | np.ndarray) -> dict[str, Any]:
    cm = cm.numpy() if isinstance(cm, torch.Tensor) else cm
    iou, dice = iou_per_class(cm), dice_per_class(cm)
    return {
        "pixel_accuracy": pixel_accuracy(cm),
        "miou": mean_iou(cm),
        "iou": {c: float(iou[i]) for i, c in enumerate(CLASSES)},
        "mean_dice": float(np.nanmean(dice)),
        "dice": {c: float(dice[i]) for i, c in enumerate(CLASSES)},
        "binary_pet_iou": binary_pet_iou(cm),
        "confusion": cm.tolist(),
    }


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled resident set growth on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._max = max(self._max, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (max(self._max, self._proc.memory_info().rss) - self._base) / 2**20


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device, bf16: bool
) -> tuple[np.ndarray, float]:
    """Logits → labels for uint8 (N,S,S,3) ``images``; returns labels and model images/s
    (forward, argmax and copy to the host, of the median full batch).

    The model runs with its BatchNorms folded into the convolutions (:func:`fuse_for_inference`),
    as a deployed model would."""
    model = fuse_for_inference(model.to(device)).to(memory_format=torch.channels_last)
    out = np.empty(images.shape[:3], dtype=np.uint8)
    # The first call per batch shape allocates and builds kernels (oneDNN primitives, cuDNN
    # plans): warm up the full batch and the last, smaller one, outside the timing.
    for n in sorted({min(batch_size, len(images)), len(images) % batch_size} - {0}):
        warm = normalize(to_float(torch.from_numpy(images[:n]).to(device)))
        with autocast(device, bf16):
            model(warm)
    rates = []  # images/s of each full batch (the last, smaller one only if it is the only one)
    for start in range(0, len(images), batch_size):
        x = normalize(to_float(torch.from_numpy(images[start : start + batch_size]).to(device)))
        t0 = time.perf_counter()
        with autocast(device, bf16):
            logits = model(x)
        labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
        if len(labels) == batch_size or not rates:
            rates.append(len(labels) / (time.perf_counter() - t0))
        out[start : start + len(labels)] = labels
    # The median batch: one disturbed batch (another process, a page fault) does not move it.
    return out, float(np.median(rates))


@torch.no_grad()
def original_resolution_cm(
    model: torch.nn.Module,
    images: np.ndarray,
    names: list[str],
    sizes: list[list[int]],
    raw: Path,
    device: torch.device,
) -> torch.Tensor:
    """Confusion at each image's own size: logits upsampled bilinearly, original trimap labels."""
    model = fuse_for_inference(model.to(device)).to(memory_format=torch.channels_last)
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for i, (name, (h, w)) in enumerate(zip(names, sizes, strict=True)):
        path = trimap_path(raw, name)
        try:
            trimap = np.asarray(Image.open(path))
        except OSError as exc:
            raise DataError(
                f"{path}: cannot read the original trimap ({exc}); rerun download"
            ) from None
        if trimap.shape != (h, w):
            raise DataError(f"{path}: size {trimap.shape} differs from the manifest's {(h, w)}")
        x = normalize(to_float(torch.from_numpy(images[i : i + 1]).to(device)))
        logits = F.interpolate(model(x).float(), size=(h, w), mode="bilinear", align_corners=False)
        target = torch.from_numpy(trimap_to_labels(trimap).astype(np.int64))
        cm += confusion_matrix(logits.argmax(1).cpu()[0], target, NUM_CLASSES)
    return cm


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


BOOTSTRAP_KEYS = ("miou", "iou_border")  # what the report compares between architectures


def bootstrap_intervals(
    cms: dict[str, np.ndarray], resamples: int, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Paired percentile-bootstrap intervals over test images, for the report's comparisons.

    ``cms``: arch -> (N, C, C) per-image confusion matrices of the same N test images. Each of
    ``resamples`` replicates draws N images with replacement (one draw shared by every
    architecture: the comparisons are paired) and rescores the summed matrix. Returns the
    ``level`` interval of each architecture's mIoU and, for every pair ``"a-b"`` (a before b in
    the order of ``cms``), of the differences a - b in mIoU and border IoU. It measures how much
    the scores depend on which test images were drawn, not how much a second training seed would
    move them. Deterministic for a ``seed``.
    """
    archs = list(cms)
    n = len(cms[archs[0]])
    rng = np.random.default_rng(seed)
    stats: dict[str, dict[str, list[np.ndarray]]] = {
        a: {k: [] for k in BOOTSTRAP_KEYS} for a in archs
    }
    border = CLASSES.index("border")
    for lo in range(0, resamples, 250):  # (chunk, N) weights at a time: bounded memory
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=min(250, resamples - lo))
        weights = draws.astype(np.float64)  # counts stay exact in float64; products run on BLAS
        for a in archs:
            totals = (weights @ cms[a].reshape(n, -1).astype(np.float64)).reshape(
                -1, *cms[a].shape[1:]
            )
            stats[a]["miou"].append(mean_iou(totals))
            stats[a]["iou_border"].append(iou_per_class(totals)[:, border])
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: np.ndarray) -> dict[str, float]:
        low, high = np.nanpercentile(values, tails) if np.isfinite(values).any() else (np.nan,) * 2
        return {"low": float(low), "high": float(high)}

    joined = {a: {k: np.concatenate(v) for k, v in s.items()} for a, s in stats.items()}
    return {
        "level": level,
        "resamples": resamples,
        "over": f"{n} test images",
        "miou": {a: interval(joined[a]["miou"]) for a in archs},
        "diff": {
            f"{a}-{b}": {k: interval(joined[a][k] - joined[b][k]) for k in BOOTSTRAP_KEYS}
            for i, a in enumerate(archs)
            for b in archs[i + 1 :]
        },
    }


def choose_examples(per_image: dict[str, np.ndarray], n: int) -> list[int]:
    """Half evenly spaced test images (fixed), half the hardest by mIoU averaged over models."""
    total = len(next(iter(per_image.values())))
    n = min(n, total)
    n_hard = n // 2
    mean = np.mean(np.stack(list(per_image.values())), axis=0)
    hardest = [int(i) for i in np.argsort(mean, kind="stable")[:n_hard]]
    fixed = [int(i) for i in np.linspace(0, total - 1, n) if int(i) not in hardest]
    return sorted(set(hardest) | set(fixed[: n - n_hard]), key=lambda i: (i not in hardest, i))


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The input dimmed to grey, every pixel whose predicted label is wrong in red."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat((40 + 0.45 * grey).astype(np.uint8)[..., None], 3, axis=2)
    out[pred != truth] = ERROR_COLOUR
    return out


def grid_row(
    image: np.ndarray, truth: np.ndarray, preds: list[np.ndarray], scale: int
) -> Image.Image:
    """Two lines: input | ground truth | one prediction per architecture, side by side, and
    under each prediction its error map (:func:`error_map`); white under input and truth."""
    h, w, _ = image.shape
    blank = np.full_like(image, 255)
    top = [image, PALETTE[truth]] + [PALETTE[p] for p in preds]
    bottom = [blank, blank] + [error_map(image, truth, p) for p in preds]
    sep = np.full((h, 2, 3), 255, dtype=np.uint8)

    def line(tiles: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=1)

    upper = line(top)
    gap = np.full((2, upper.shape[1], 3), 255, dtype=np.uint8)
    pil = Image.fromarray(np.concatenate([upper, gap, line(bottom)], axis=0))
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)


def evaluate_all(params: EvaluateParams, paths: EvalPaths) -> dict[str, Any]:
    """Score every model on the test split and write metrics, plot data, grids and COCO files."""
    device = _device(params.device)
    manifest = read_manifest(paths.prepared)
    test = load_split(paths.prepared, "test", mmap=False)
    sizes = manifest["splits"]["test"]["original_sizes"]
    results, preds, per_image, image_cms = {}, {}, {}, {}
    for arch, model_path in paths.models.items():
        model, blob = load_trained(model_path)
        train_metrics = _read_json(paths.train_metrics[arch])
        with PeakMemory(device) as mem:
            pred, ips = predict(model, test.images, params.batch_size, device, params.bf16)
        cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(test.masks), NUM_CLASSES)
        res = {"arch": arch, "image_size": blob["image_size"], "n_test": len(test), **scores(cm)}
        if params.original_resolution:
            cm_orig = original_resolution_cm(
                model, test.images, test.names, sizes, paths.raw, device
            )
            res["original_resolution"] = scores(cm_orig)
        res.update(
            inference_images_per_s=ips,
            inference_peak_memory_mb=mem.peak_mb,
            train_seconds=train_metrics["train_seconds"],
            train_images_per_s=train_metrics["train_images_per_s"],
            best_epoch=train_metrics["best_epoch"],
            best_val_miou=train_metrics["best_val_miou"],
            params=train_metrics["params"],
            gflops_per_image=train_metrics["gflops_per_image"],
        )
        results[arch], preds[arch] = res, pred
        image_cms[arch] = per_image_confusion(pred, test.masks)
        per_image[arch] = mean_iou(image_cms[arch])

    for arch, res in results.items():
        atomic_write_json(paths.metrics_dir / f"{arch}.json", res)
    summary = _summary(results)
    if params.bootstrap and len(test):
        summary["intervals"] = bootstrap_intervals(image_cms, params.bootstrap)
    atomic_write_json(paths.summary, summary)
    _write_plot_data(paths.plots, results, per_image, test.names)
    examples = choose_examples(per_image, params.n_examples)
    _write_grids(paths.predictions, test, preds, per_image, examples, params.grid_scale)
    _write_coco(paths.coco, test, preds)
    return summary


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the train stages first (dvc repro)") from None


SUMMARY_KEYS = (
    "miou",
    "pixel_accuracy",
    "mean_dice",
    "binary_pet_iou",
    "train_seconds",
    "inference_images_per_s",
    "params",
    "gflops_per_image",
)


def _summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    archs = {
        a: {**{k: r[k] for k in SUMMARY_KEYS}, **{f"iou_{c}": r["iou"][c] for c in CLASSES}}
        for a, r in results.items()
    }
    lower_is_better = {"train_seconds", "params", "gflops_per_image"}
    best = {}
    for key in next(iter(archs.values())):
        pick = min if key in lower_is_better else max
        best[key] = pick(archs, key=lambda a, k=key: archs[a][k])
    return {"architectures": archs, "best": best}


def _csv(rows: list[dict[str, Any]]) -> bytes:
    cols = list(rows[0])
    lines = [",".join(cols)] + [
        ",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
        for r in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def _write_plot_data(out: Path, results, per_image, names) -> None:
    confusion, per_class, runtime, images = [], [], [], []
    for arch, res in results.items():
        cm = np.asarray(res["confusion"], dtype=np.float64)
        rows = cm.sum(1, keepdims=True)
        for t, actual in enumerate(CLASSES):
            for p, predicted in enumerate(CLASSES):
                confusion.append(
                    {"arch": arch, "actual": actual, "predicted": predicted,
                     "pixels": int(cm[t, p]), "fraction": float(cm[t, p] / max(rows[t, 0], 1))}
                )  # fmt: skip
        for c in CLASSES:
            per_class.append(
                {"arch": arch, "class": c, "iou": res["iou"][c], "dice": res["dice"][c]}
            )
        runtime.append(
            {"arch": arch, "train_seconds": float(res["train_seconds"]),
             "train_images_per_s": float(res["train_images_per_s"]),
             "inference_images_per_s": float(res["inference_images_per_s"]),
             "gflops_per_image": float(res["gflops_per_image"]), "params": int(res["params"])}
        )  # fmt: skip
    for i, name in enumerate(names):
        images.append({"image": name, **{a: float(v[i]) for a, v in per_image.items()}})
    atomic_write_bytes(out / "confusion.csv", _csv(confusion))
    atomic_write_bytes(out / "per_class.csv", _csv(per_class))
    atomic_write_bytes(out / "runtime.csv", _csv(runtime))
    atomic_write_bytes(out / "per_image.csv", _csv(images))


def _write_grids(out: Path, test, preds, per_image, examples: list[int], scale: int) -> None:
    with atomic_dir(out) as tmp:
        for rank, i in enumerate(examples):
            row = grid_row(test.images[i], test.masks[i], [p[i] for p in preds.values()], scale)
            worst = min(v[i] for v in per_image.values())
            row.save(tmp / f"{rank:02d}_{test.names[i]}_miou{worst:.2f}.png", optimize=True)


def _write_coco(out: Path, test, preds) -> None:
    with atomic_dir(out) as tmp:
        gt = coco.ground_truth(test.names, test.masks, CLASSES)
        (tmp / "ground_truth.json").write_text(json.dumps(gt))
        for arch, pred in preds.items():
            results = coco.results(pred, CLASSES)
            coco.check_round_trip(results, pred)
            (tmp / f"{arch}_results.json").write_text(json.dumps(results))

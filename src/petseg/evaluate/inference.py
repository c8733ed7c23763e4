"""Running a trained network over the test split: labels, throughput, memory, full-size scores.

The network runs with its BatchNorms folded into the convolutions (:func:`fuse_for_inference`),
as a deployed model would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image

from petseg import NUM_CLASSES
from petseg.data.augment import normalize, to_float
from petseg.data.oxford import trimap_path, trimap_to_labels
from petseg.device import autocast
from petseg.errors import DataError
from petseg.metrics import confusion_matrix
from petseg.models.inference import fuse_for_inference


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

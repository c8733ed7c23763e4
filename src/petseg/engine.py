"""The training and evaluation loops: ``train_one_epoch`` and ``evaluate``.

Batches come straight from the prepared uint8 rows (the whole real set at 128 px is a few hundred
MB): index a batch, move it to the device, convert and augment the whole batch on tensors. No
per-sample ``Dataset``/``DataLoader``: decoding already happened once in ``preprocess``, and a
batched affine warp is small next to a training step. On a GPU the splits are copied
into GPU memory once (:func:`on_device`), so a batch is gathered, augmented and normalised there by
a few asynchronous kernels, with no host work or host-to-device copy per batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from petseg.compiled import ForwardLoss, eager_forward
from petseg.config import AugmentParams
from petseg.data.augment import make_batch
from petseg.device import autocast
from petseg.errors import PetsegError
from petseg.losses import LossFn
from petseg.metrics import confusion_matrix

log = logging.getLogger(__name__)


class DivergenceError(PetsegError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class Feed:
    """How batches are made: device placement, memory format and augmentation."""

    device: torch.device
    channels_last: bool
    augment: AugmentParams | None = None

    def batch(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        idx: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N,H,W,3) / (N,H,W) rows ``idx`` → normalised float images and int64 masks.

        ``images``/``masks``: host arrays or row readers (the rows are copied to the device), or
        tensors already on the device (see :func:`on_device`: the rows are gathered there)."""
        if isinstance(images, torch.Tensor) and images.device != torch.device("cpu"):
            idx = idx.to(images.device, non_blocking=True)
        x = images[idx].to(self.device, non_blocking=True)
        y = masks[idx].to(self.device, non_blocking=True)
        return make_batch(x, y, self.augment, generator, self.channels_last)


def _nbytes(array: Any) -> int:
    if isinstance(array, torch.Tensor):
        return array.numel() * array.element_size()
    return int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize


def on_device(
    arrays: tuple[Any, ...], device: torch.device, share: float = 0.25, chunk: int = 512
) -> tuple[Any, ...]:
    """On a CUDA device, copies of ``arrays`` (uint8 splits: numpy arrays, row readers or
    tensors) in its memory when together they take at most ``share`` of its free memory, else
    ``arrays`` unchanged; on other devices always unchanged (a CPU reads rows where they are).

    Copied ``chunk`` rows at a time, so host memory holds one chunk, not the split. At 128 px the
    real train and val splits take a few per cent of any training GPU's memory.
    """
    if device.type != "cuda":
        return arrays
    free, _ = torch.cuda.mem_get_info(device)
    if sum(_nbytes(a) for a in arrays) > share * free:
        log.info("splits stay in host memory: over %.0f%% of the free GPU memory", 100 * share)
        return arrays
    out = []
    for a in arrays:
        dev = torch.empty(tuple(a.shape), dtype=torch.uint8, device=device)
        for i in range(0, len(a), chunk):
            rows = a[i : i + chunk]
            rows = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
            dev[i : i + chunk].copy_(rows)
        out.append(dev)
    return tuple(out)


def train_one_epoch(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: LossFn,
    epoch: int,
    bf16: bool,
    device: torch.device,
    progress: bool = True,
    desc: str = "",
    after_step: Callable[[], None] | None = None,
    forward: ForwardLoss | None = None,
) -> float:
    """One pass over ``batches``; returns the mean training loss; NaN/inf: DivergenceError.

    ``after_step`` runs after every optimizer step (e.g. to update a weight average);
    ``forward`` computes the loss of a batch (default: ``model`` under autocast, then
    ``loss_fn``; :mod:`petseg.compiled` makes the one of ``train.compile``)."""
    forward = forward or eager_forward(model, loss_fn, device, bf16)
    model.train()
    total = 0.0
    bar = tqdm(total=steps, desc=desc, leave=False, disable=None if progress else True)
    every = max(1, steps // 5)  # plain log lines when there is no terminal for a bar
    for step, (x, y) in enumerate(batches, start=1):
        loss = forward(x, y)
        value = loss.item()
        if not math.isfinite(value):
            bar.close()
            lr = optimizer.param_groups[0]["lr"]
            raise DivergenceError(
                f"training diverged: loss is {value} at epoch {epoch}, step {step}/{steps} "
                f"(learning rate {lr:.3g}); lower train.lr (e.g. to {lr / 10:.2g}) or raise "
                "train.warmup_fraction"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        total += value
        bar.update(1)
        bar.set_postfix(loss=f"{total / step:.4f}")
        if bar.disable and progress and (step % every == 0 or step == steps):
            log.info("%s epoch %d step %d/%d loss %.4f", desc, epoch, step, steps, total / step)
    bar.close()
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    indices: torch.Tensor,
    feed: Feed,
    batch_size: int,
    num_classes: int,
    loss_fn: LossFn | None,
    bf16: bool,
) -> tuple[torch.Tensor, float, int]:
    """Confusion matrix (C, C), summed loss × images, and images seen, over rows ``indices``."""
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=feed.device)
    loss_sum = 0.0
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x, y = feed.batch(images, masks, idx)
        with autocast(feed.device, bf16):
            logits = model(x)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y).item() * len(idx)
        cm += confusion_matrix(logits.argmax(1), y, num_classes)
    return cm, loss_sum, len(indices)

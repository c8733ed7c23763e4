"""The prediction grids: one PNG per chosen test image, input | truth | each network, with each
network's error map below (DVC shows ``plots/predictions`` as images; the report embeds them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from petseg import ERROR_COLOUR
from petseg import PALETTE as CLASS_COLOURS
from petseg.data.prepared import PreparedSplit
from petseg.fileio import atomic_dir

PALETTE = np.array(CLASS_COLOURS, dtype=np.uint8)


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


def write_grids(
    out: Path,
    test: PreparedSplit,
    preds: dict[str, np.ndarray],
    per_image: dict[str, np.ndarray],
    examples: list[int],
    scale: int,
) -> None:
    """``out``/<rank>_<image>_miou<lowest>.png for each of ``examples`` (test row indices)."""
    with atomic_dir(out) as tmp:
        for rank, i in enumerate(examples):
            row = grid_row(test.images[i], test.masks[i], [p[i] for p in preds.values()], scale)
            worst = min(v[i] for v in per_image.values())
            row.save(tmp / f"{rank:02d}_{test.names[i]}_miou{worst:.2f}.png", optimize=True)

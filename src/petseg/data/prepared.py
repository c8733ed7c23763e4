"""The prepared array format written by ``preprocess`` and read by training and evaluation.

``data/prepared/`` holds, per split ``s`` in :data:`SPLITS`:

- ``{s}_images.npy``: uint8, shape (N, S, S, 3), RGB, S = ``preprocess.image_size``;
- ``{s}_masks.npy``: uint8, shape (N, S, S), labels 0 pet / 1 background / 2 border;

and ``manifest.json`` with, per split, the image names (same order as the arrays), their original
(height, width), breeds, class pixel frequencies, and the list of skipped files with reasons.

Plain ``.npy`` files are memory-mappable, so a loader can feed batches without holding the whole
set in RAM twice, and any tool (numpy, torch.from_numpy) reads them without petseg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petseg.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PreparedSplit:
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) uint8
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / f"{split}_images.npy", root / f"{split}_masks.npy"


def save_split(root: str | Path, split: str, images: np.ndarray, masks: np.ndarray) -> None:
    """Write one split's arrays (the caller writes into a temporary folder: fileio.atomic_dir)."""
    if images.dtype != np.uint8 or masks.dtype != np.uint8:
        raise ValueError("prepared arrays must be uint8")
    if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3]:
        raise ValueError(f"bad shapes: images {images.shape}, masks {masks.shape}")
    img_path, mask_path = split_paths(root, split)
    np.save(img_path, images)
    np.save(mask_path, masks)


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the preprocess stage first (dvc repro preprocess)"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): rerun preprocess") from None


def load_split(root: str | Path, split: str, mmap: bool = True) -> PreparedSplit:
    """Load one split; with ``mmap`` the arrays are memory-mapped read-only."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    manifest = read_manifest(root)
    names = manifest["splits"][split]["names"]
    img_path, mask_path = split_paths(root, split)
    try:
        images = np.load(img_path, mmap_mode="r" if mmap else None)
        masks = np.load(mask_path, mmap_mode="r" if mmap else None)
    except FileNotFoundError as exc:
        raise DataError(
            f"{exc.filename} not found: rerun preprocess (dvc repro preprocess)"
        ) from None
    if len(images) != len(names) or len(masks) != len(names):
        raise DataError(
            f"{root}: {split} arrays hold {len(images)} images / {len(masks)} masks but the "
            f"manifest lists {len(names)} names: rerun preprocess"
        )
    return PreparedSplit(images=images, masks=masks, names=list(names))

"""COCO interoperability through pycocotools: label maps ⇄ run-length encoded (RLE) masks.

Predictions are exported as COCO *results* (one RLE per image and class present) next to a matching
COCO ground-truth file, so they can be scored or inspected by any COCO tool. Category ids are the
label + 1 (COCO reserves 0). Masks are at the network's resolution (``preprocess.image_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from petseg.errors import DataError


def encode(binary: np.ndarray) -> dict[str, Any]:
    """(H, W) bool/uint8 → compressed RLE with ``counts`` as str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode` (also accepts bytes counts)."""
    counts = rle["counts"]
    return mask_utils.decode(
        {"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    )


def _per_class(labels: np.ndarray, n_classes: int):
    for c in range(n_classes):
        binary = labels == c
        if binary.any():
            yield c, encode(binary)


def ground_truth(names: Sequence[str], masks: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """A COCO ground-truth dict: images, categories and one RLE annotation per image and class."""
    images, annotations = [], []
    for i, (name, labels) in enumerate(zip(names, masks, strict=True)):
        h, w = labels.shape
        images.append({"id": i + 1, "file_name": f"{name}.jpg", "height": h, "width": w})
        for c, rle in _per_class(labels, len(classes)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(_bytes(rle))),
                    "bbox": [float(v) for v in mask_utils.toBbox(_bytes(rle))],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def results(pred: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """COCO results: one RLE per image (ids as in :func:`ground_truth`) and predicted class."""
    return [r for i, labels in enumerate(pred) for r in image_results(i + 1, labels, len(classes))]


def image_results(image_id: int, labels: np.ndarray, n_classes: int) -> list[dict[str, Any]]:
    """The COCO results of one (H, W) label map: one RLE per class present (id = label + 1)."""
    return [
        {"image_id": image_id, "category_id": c + 1, "segmentation": rle, "score": 1.0}
        for c, rle in _per_class(labels, n_classes)
    ]


def to_labels(entries: list[dict[str, Any]], n_images: int, shape: tuple[int, int]) -> np.ndarray:
    """Rebuild (N, H, W) label maps from COCO results/annotations (category_id - 1)."""
    out = np.full((n_images, *shape), 255, dtype=np.uint8)
    for e in entries:
        out[e["image_id"] - 1][decode(e["segmentation"]).astype(bool)] = e["category_id"] - 1
    return out


def check_round_trip(entries: list[dict[str, Any]], labels: np.ndarray) -> None:
    """Decode what was encoded and compare: an export that does not reproduce the masks is a bug."""
    back = to_labels(entries, len(labels), labels.shape[1:])
    if not np.array_equal(back, labels):
        bad = int(np.flatnonzero((back != labels).reshape(len(labels), -1).any(1))[0])
        raise DataError(f"COCO export does not round-trip: image {bad + 1} decodes differently")


def _bytes(rle: dict[str, Any]) -> dict[str, Any]:
    return {"size": rle["size"], "counts": rle["counts"].encode()}

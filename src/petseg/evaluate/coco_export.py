"""COCO export of the test split: the ground truth and each network's predictions as RLE
(pycocotools), checked to decode back to the very masks they encode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from petseg import CLASSES
from petseg.data import coco
from petseg.data.prepared import PreparedSplit
from petseg.fileio import atomic_dir


def write_coco(out: Path, test: PreparedSplit, preds: dict[str, np.ndarray]) -> None:
    """``out``/ground_truth.json and ``out``/<arch>_results.json, written atomically."""
    with atomic_dir(out) as tmp:
        gt = coco.ground_truth(test.names, test.masks, CLASSES)
        (tmp / "ground_truth.json").write_text(json.dumps(gt))
        for arch, pred in preds.items():
            results = coco.results(pred, CLASSES)
            coco.check_round_trip(results, pred)
            (tmp / f"{arch}_results.json").write_text(json.dumps(results))

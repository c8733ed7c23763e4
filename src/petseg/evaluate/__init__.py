"""The ``evaluate`` stage: test-set scores, runtime, DVC plot data, prediction grids, COCO export.

For every trained architecture one dataset-wide confusion matrix is accumulated on the test split
(at the network's resolution and, with ``evaluate.original_resolution``, at each test image's own
size: logits are upsampled bilinearly and compared with the original trimap). Every score is a pure
function of that matrix (:mod:`petseg.evaluate.scores`); the files are written through
:mod:`petseg.results`.

``scores``       scores of a confusion matrix, Boundary IoU, paired bootstrap intervals
``inference``    running a network over the test split: labels, throughput, memory, full size
``cost``         training step and inference batch of every network, timed round-robin
``plot_data``    plots/eval/*.csv
``grids``        plots/predictions/*.png (and plots/eval/examples.csv: which image each shows)
``coco_export``  data/coco: ground truth and predictions as COCO RLE
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petseg import NUM_CLASSES, results
from petseg.config import EvaluateParams
from petseg.data.prepared import PreparedSplit, load_split, read_manifest
from petseg.device import pick_device
from petseg.evaluate.coco_export import write_coco
from petseg.evaluate.cost import time_steps
from petseg.evaluate.grids import choose_examples, example_rows, write_grids
from petseg.evaluate.inference import PeakMemory, original_resolution_cm, predict
from petseg.evaluate.plot_data import write_plot_data
from petseg.evaluate.scores import (
    bootstrap_intervals,
    boundary_counts,
    boundary_iou,
    per_image_confusion,
    scores,
)
from petseg.fileio import atomic_write_json, stage_outputs
from petseg.metrics import confusion_matrix, mean_iou
from petseg.models import load_model
from petseg.results import CostSetup, Summary, TestMetrics


@dataclass(frozen=True)
class EvalPaths:
    prepared: Path  # data/prepared
    raw: Path  # data/raw (original trimaps for the original-resolution scores)
    models: dict[str, Path]  # arch -> models/<arch>.pt
    train_metrics: dict[str, Path]  # arch -> metrics/train/<arch>.json
    metrics_dir: Path  # metrics/test/<arch>.json
    summary: Path  # metrics/summary.json
    scores: Path  # metrics/scores.json: the headline numbers, the DVC metrics file
    plots: Path  # plots/eval: confusion, runtime, per_class, per_image and examples .csv
    predictions: Path  # plots/predictions/*.png
    coco: Path  # data/coco: ground truth and per-architecture results

    def outputs(self) -> list[Path]:
        """Everything the stage writes (its DVC outs)."""
        tests = [self.metrics_dir / f"{arch}.json" for arch in self.models]
        return [*tests, self.summary, self.scores, self.plots, self.predictions, self.coco]


@dataclass(frozen=True)
class Evaluated:
    """One architecture on the test split."""

    metrics: TestMetrics
    model: torch.nn.Module
    pred: np.ndarray  # (N, S, S) uint8 labels
    image_cms: np.ndarray  # (N, C, C) per-image confusion matrices
    bands: np.ndarray  # (N, 2) Boundary IoU counts of the pet mask


def evaluate_all(params: EvaluateParams, paths: EvalPaths) -> Summary:
    """Score every model on the test split and write metrics, plot data, grids and COCO files:
    all of them, or after a failure none (no mix of this run's files and an earlier run's)."""
    with stage_outputs(*paths.outputs()):
        return _evaluate_and_write(params, paths)


def _evaluate_and_write(params: EvaluateParams, paths: EvalPaths) -> Summary:
    device = pick_device(params.device, "evaluate.device")
    manifest = read_manifest(paths.prepared)
    test = load_split(paths.prepared, "test", mmap=False)
    sizes = manifest["splits"]["test"]["original_sizes"]
    done = {arch: evaluate_one(arch, params, paths, test, sizes, device) for arch in paths.models}
    tests, setup = with_costs(done, params, device)
    for arch, res in tests.items():
        results.write(paths.metrics_dir / f"{arch}.json", res)
    image_cms = {a: e.image_cms for a, e in done.items()}
    intervals = None
    if params.bootstrap and len(test):
        bands = {a: e.bands for a, e in done.items()}
        intervals = bootstrap_intervals(image_cms, params.bootstrap, boundary=bands)
    summary = Summary.of(tests, intervals, setup)
    results.write(paths.summary, summary)
    atomic_write_json(paths.scores, results.headline(tests))
    per_image = {a: mean_iou(cms) for a, cms in image_cms.items()}
    write_plot_data(paths.plots, tests, per_image, test.names)
    preds = {a: e.pred for a, e in done.items()}
    examples = choose_examples(per_image, params.n_examples)
    write_grids(paths.predictions, test, preds, per_image, examples, params.grid_scale)
    rows = example_rows(examples, test.names)
    results.write_csv(paths.plots / "examples.csv", results.EXAMPLE_COLUMNS, rows)
    write_coco(paths.coco, test, preds)
    return summary


def evaluate_one(
    arch: str,
    params: EvaluateParams,
    paths: EvalPaths,
    test: PreparedSplit,
    sizes: list[list[int]],
    device: torch.device,
) -> Evaluated:
    model, info = load_model(paths.models[arch])
    trained = results.read_train(paths.train_metrics[arch])
    with PeakMemory(device) as mem:
        pred, ips = predict(model, test.images, params.batch_size, device, params.bf16)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(test.masks), NUM_CLASSES)
    bands = boundary_counts(pred, test.masks)
    original = None
    if params.original_resolution:
        cm_orig = original_resolution_cm(model, test.images, test.names, sizes, paths.raw, device)
        original = scores(cm_orig)
    metrics = TestMetrics(
        arch=arch,
        image_size=info.image_size,
        n_test=len(test),
        **dict(scores(cm)),
        original_resolution=original,
        inference_images_per_s=ips,
        inference_peak_memory_mb=mem.peak_mb,
        train_seconds=trained.train_seconds,
        train_images_per_s=trained.train_images_per_s,
        best_epoch=trained.best_epoch,
        best_val_miou=trained.best_val_miou,
        params=trained.params,
        gflops_per_image=trained.gflops_per_image,
        boundary_iou=boundary_iou(bands.sum(0)),
        epochs=trained.epochs,
        mlflow_run_id=info.run_id,
    )
    return Evaluated(metrics, model, pred, per_image_confusion(pred, test.masks), bands)


def with_costs(
    done: dict[str, Evaluated], params: EvaluateParams, device: torch.device
) -> tuple[dict[str, TestMetrics], CostSetup | None]:
    """Each network's metrics with its timed step costs (evaluate.cost_rounds > 0)."""
    tests = {a: e.metrics for a, e in done.items()}
    if not params.cost_rounds or not done:
        return tests, None
    size = next(iter(tests.values())).image_size
    costs, setup = time_steps(
        {a: e.model for a, e in done.items()}, batch=params.cost_batch, image_size=size,
        rounds=params.cost_rounds, device=device, bf16=params.bf16,
    )  # fmt: skip
    return {a: t.model_copy(update={"cost": costs[a]}) for a, t in tests.items()}, setup

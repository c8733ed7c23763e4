"""What the report reads: the train and evaluate outputs, validated by :mod:`petseg.results`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from petseg import results
from petseg.errors import DataError
from petseg.results import HINT, Summary, TestMetrics, TrainMetrics

# The columns of plots/experiments.csv (written by petseg.sweep) that the report reads.
EXPERIMENT_COLUMNS = ("variant", "arch", "miou")


@dataclass(frozen=True)
class ReportPaths:
    summary: Path  # metrics/summary.json
    test_metrics: Path  # metrics/test/<arch>.json
    train_metrics: Path  # metrics/train/<arch>.json
    train_plots: Path  # plots/train/<arch>.csv
    eval_plots: Path  # plots/eval/{confusion,per_class,runtime,per_image,examples}.csv
    predictions: Path  # plots/predictions/*.png
    manifest: Path  # data/prepared/manifest.json
    out: Path  # report/: index.html, README.md, figures/
    experiments: Path | None = None  # plots/experiments.csv; absent = no experiments were run
    seeds: Path | None = None  # plots/seeds.csv (make compare); absent or empty = one seed
    seed_diffs: Path | None = None  # plots/seed_diffs.csv (make compare)
    transfer: Path | None = None  # plots/transfer.csv (make transfer); absent or empty = none

    params: Path = Path("params.yaml")  # what the notebook's code cells load the params from


@dataclass(frozen=True)
class Inputs:
    summary: Summary
    test: dict[str, TestMetrics]  # arch -> metrics/test/<arch>.json
    train: dict[str, TrainMetrics]  # arch -> metrics/train/<arch>.json
    curves: dict[str, pd.DataFrame]  # arch -> plots/train/<arch>.csv
    confusion: pd.DataFrame
    per_class: pd.DataFrame
    runtime: pd.DataFrame
    per_image: pd.DataFrame
    examples: pd.DataFrame  # plots/eval/examples.csv: file, kind, rank, image
    predictions: Path  # the folder of the grid PNGs that ``examples`` lists
    manifest: dict[str, Any]
    experiments: pd.DataFrame | None
    seeds: pd.DataFrame | None = None  # None: make compare has not run
    seed_diffs: pd.DataFrame | None = None
    transfer: pd.DataFrame | None = None  # None: make transfer has not run

    @property
    def archs(self) -> list[str]:
        return self.summary.archs


def load_inputs(paths: ReportPaths) -> Inputs:
    """Read every input; a missing or malformed one is a :class:`DataError` naming the file."""
    summary = results.read(Summary, paths.summary)
    if not summary.architectures:
        raise DataError(f"{paths.summary} lists no architectures: {HINT['evaluate']}")
    archs = summary.archs
    ev = paths.eval_plots
    return Inputs(
        summary=summary,
        test={a: results.read(TestMetrics, paths.test_metrics / f"{a}.json") for a in archs},
        train={a: results.read_train(paths.train_metrics / f"{a}.json") for a in archs},
        curves={
            a: results.read_csv(
                paths.train_plots / f"{a}.csv", results.TRAIN_CURVE_COLUMNS, HINT["train"]
            )
            for a in archs
        },
        confusion=results.read_csv(ev / "confusion.csv", results.CONFUSION_COLUMNS),
        per_class=results.read_csv(ev / "per_class.csv", results.PER_CLASS_COLUMNS),
        runtime=results.read_csv(ev / "runtime.csv", results.RUNTIME_COLUMNS),
        per_image=results.read_csv(ev / "per_image.csv", (results.PER_IMAGE_INDEX, *archs)),
        examples=_examples(ev / "examples.csv", paths.predictions),
        predictions=paths.predictions,
        manifest=_manifest(paths.manifest),
        experiments=_experiments(paths.experiments),
        **_seeds(paths),
        transfer=_transfer(paths.transfer),
    )


def _seeds(paths: ReportPaths) -> dict[str, pd.DataFrame | None]:
    """plots/seeds.csv and plots/seed_diffs.csv, or None for both when make compare has not run
    (the committed files hold only their header)."""
    if paths.seeds is None or paths.seed_diffs is None or not paths.seeds.exists():
        return {"seeds": None, "seed_diffs": None}
    hint = "rerun make compare"
    seeds = results.read_csv(paths.seeds, results.SEEDS_COLUMNS, hint)
    diffs = results.read_csv(paths.seed_diffs, results.SEED_DIFFS_COLUMNS, hint)
    if seeds.empty:
        return {"seeds": None, "seed_diffs": None}
    return {"seeds": seeds, "seed_diffs": diffs}


def _transfer(path: Path | None) -> pd.DataFrame | None:
    """plots/transfer.csv, or None when make transfer has not run (committed header-only)."""
    if path is None or not path.exists():
        return None
    rows = results.read_csv(path, results.TRANSFER_COLUMNS, "rerun make transfer")
    return None if rows.empty else rows


def _examples(path: Path, folder: Path) -> pd.DataFrame:
    """examples.csv, every grid it lists checked to be in ``folder`` (it may list none)."""
    examples = results.read_csv(path, results.EXAMPLE_COLUMNS)
    missing = [f for f in examples["file"] if not (folder / f).is_file()]
    if missing:
        listed = f"{folder} lacks {', '.join(missing)} (listed in {path})"
        raise DataError(f"{listed}: {HINT['evaluate']}")
    return examples


def _manifest(path: Path) -> dict[str, Any]:
    manifest = results.read_json(path, HINT["preprocess"])
    if not isinstance(manifest, dict) or "counts" not in manifest:
        raise DataError(f"{path} lacks counts: {HINT['preprocess']}")
    return manifest


def _experiments(path: Path | None) -> pd.DataFrame | None:
    """plots/experiments.csv, or None when no sweep has run."""
    if path is None or not path.exists():
        return None
    experiments = results.read_csv(path, EXPERIMENT_COLUMNS, "rerun make sweep")
    # The committed file is a header only until make sweep fills it.
    return None if experiments.empty else experiments

"""The report's tables: test metrics per architecture, regularization runs, and the setup."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from petseg import CLASSES
from petseg.config import (
    ARCH_SECTIONS,
    ArchParams,
    DataParams,
    ModelsParams,
    PreprocessParams,
    TrainParams,
)
from petseg.report.inputs import Inputs
from petseg.results import LOWER_IS_BETTER, TestMetrics, TrainMetrics

SOURCES = {
    "oxford-iiit-pet": "Oxford-IIIT Pet (official archives)",
    "synthetic": "synthetic pets-like scenes (offline demo data, not photographs)",
    "folder": "Oxford-IIIT Pet layout read from an extracted folder",
    "coco": "your COCO-annotated images, converted to the Oxford-IIIT Pet layout",
}


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    best: frozenset[tuple[int, int]] = frozenset()  # (row, column) cells marked best
    numeric_from: int = 1  # columns from here on are right-aligned


@dataclass(frozen=True)
class Column:
    title: str
    metric: str  # path in TestMetrics, e.g. "iou.border" (see Record.at)
    fmt: str
    per: float = 1.0  # shown in units of this many, e.g. 1e6 for millions

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    def value(self, test: TestMetrics) -> float:
        return float(test.at(self.metric)) / self.per


# ---------------------------------------------------------------------------------- metrics
def metric_columns(test: Mapping[str, TestMetrics]) -> list[Column]:
    cols = [
        Column("mIoU", "miou", ".4f"),
        Column("Pixel acc.", "pixel_accuracy", ".4f"),
        *(Column(f"IoU {c}", f"iou.{c}", ".4f") for c in CLASSES),
        Column("Mean Dice", "mean_dice", ".4f"),
        Column("Binary pet IoU", "binary_pet_iou", ".4f"),
        Column("Boundary IoU", "boundary_iou", ".4f"),
    ]
    if all(r.original_resolution is not None for r in test.values()):
        cols.append(Column("mIoU orig. res.", "original_resolution.miou", ".4f"))
    cols += [
        Column("Params (M)", "params", ".3f", per=1e6),
        Column("GFLOPs/img", "gflops_per_image", ".4f"),
    ]
    if all(r.cost is not None for r in test.values()):  # ratios from interleaved rounds
        cols += [
            Column("Train step ×", "cost.train_step.ratio", ".2f"),
            Column("Inference ×", "cost.inference_batch.ratio", ".2f"),
        ]
    return cols + [
        Column("Train s (wall)", "train_seconds", ".1f"),
        Column("Inference img/s (wall)", "inference_images_per_s", ".1f"),
    ]


def _fmt(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "n/a"


def metrics_table(test: Mapping[str, TestMetrics]) -> Table:
    """One row per architecture. The best cell per column is compared as displayed (rounded), so
    values that print the same are all marked."""
    cols = metric_columns(test)
    archs = list(test)
    rows = [[a] + [_fmt(c.value(test[a]), c.fmt) for c in cols] for a in archs]
    best = set()
    for j, c in enumerate(cols, start=1):
        shown = {i: float(rows[i][j]) for i in range(len(archs)) if rows[i][j] != "n/a"}
        if shown:
            target = (max if c.higher_is_better else min)(shown.values())
            best |= {(i, j) for i, v in shown.items() if v == target}
    arrows = [f"{c.title} {'↑' if c.higher_is_better else '↓'}" for c in cols]
    return Table(["Architecture", *arrows], rows, frozenset(best))


def transposed(table: Table, corner: str = "Metric") -> Table:
    """``table`` (first column: each row's name) turned: one row per column, one column per row.
    The metrics table turned is as wide as there are architectures, however many metrics it shows:
    the version that fits a printed page."""
    header = [corner, *(row[0] for row in table.rows)]
    rows = [[name, *(row[j] for row in table.rows)] for j, name in enumerate(table.header[1:], 1)]
    return Table(header, rows, frozenset((j - 1, i + 1) for i, j in table.best))


def regularization_table(experiments: pd.DataFrame) -> Table:
    """mIoU per (variant, arch): mean ± sample std when several runs (seeds) share a variant."""
    rows = []
    for (variant, arch), g in experiments.groupby(["variant", "arch"], sort=False):
        miou = g["miou"].astype(float)
        value = f"{miou.mean():.4f}"
        if len(miou) > 1:
            value += f" ± {miou.std(ddof=1):.4f}"
        rows.append([str(variant), str(arch), value, str(len(miou))])
    return Table(["Variant", "Architecture", "mIoU", "Runs"], rows, numeric_from=2)


# ------------------------------------------------------------------------------------ setup
def setup_rows(
    inputs: Inputs,
    data: DataParams,
    preprocess: PreprocessParams,
    train: TrainParams,
    models: ModelsParams,
) -> list[tuple[str, str]]:
    size = preprocess.image_size
    hardware = {a: _hardware(t) for a, t in inputs.train.items()}
    weights = train.class_weights or "equal"
    return _data_rows(inputs.manifest, data) + [
        ("Image size", f"{size}×{size} px; mIoU orig. res. scores each test image at its own size"),
        ("Models", _models_text(inputs.archs, models)),
        ("Optimisation", _optimisation_text(train) + _finetuning_text(inputs.archs, models, train)),
        (
            "Loss",
            f"cross-entropy, class weights {weights}, label smoothing "
            f"{train.label_smoothing:g}, Dice weight {train.dice_weight:g}",
        ),
        ("Augmentation", _augment_text(train)),
        ("Seed", f"{train.seed} (one run per architecture)"),
        ("Hardware", _per_arch(hardware)),
    ]


def _data_rows(manifest: Mapping[str, Any], data: DataParams) -> list[tuple[str, str]]:
    """Where the images came from, how many per split, and the test pixels per class."""
    counts = manifest["counts"]
    source = SOURCES.get(data.source, data.source)
    split = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("train", "val", "test"))
    skipped = len(manifest.get("skipped", []))
    freq = manifest.get("splits", {}).get("test", {}).get("class_frequencies")
    rows = [
        ("Data", f"{source}; data.source = {data.source}"),
        ("Images per split", split + (f"; {skipped} unusable files skipped" if skipped else "")),
    ]
    if freq:
        shares = ", ".join(f"{c} {freq[c]:.1%}" for c in CLASSES if c in freq)
        rows.append(("Test pixels per class", shares))
    return rows


def _models_text(archs: list[str], models: ModelsParams) -> str:
    text = {
        a: f"depth {m.depth}, base width {m.base_width}, dropout {m.dropout:g}, {m.block} blocks"
        + (f" with {m.bottleneck}× bottleneck" if m.bottleneck > 1 else "")
        + _encoder_text(m)
        for a in archs
        if a in ARCH_SECTIONS and (m := models.of(a))
    }
    return _per_arch(text) + f"; unpool upsampling: {models.unpool.upsample}"


def _encoder_text(m: ArchParams) -> str:
    if m.encoder == "scratch":
        return ""
    weights = "ImageNet weights" if m.pretrained else "random initialisation"
    return f", encoder {m.encoder} ({weights})"


def _finetuning_text(archs: list[str], models: ModelsParams, train: TrainParams) -> str:
    """How pretrained encoders were fine-tuned, if any network has one."""
    tuned = [a for a in archs if a in ARCH_SECTIONS and models.of(a).pretrained]
    if not tuned:
        return ""
    return (
        f"; the pretrained encoders ({', '.join(tuned)}) frozen for the first "
        f"{train.freeze_encoder_epochs} epochs, then trained at {train.encoder_lr_mult:g}× lr"
    )


def _optimisation_text(train: TrainParams) -> str:
    text = (
        f"{train.epochs} epochs, batch {train.batch_size}, AdamW peak lr "
        f"{train.lr:g}, weight decay {train.weight_decay:g}, {train.schedule} schedule "
        f"({train.warmup_fraction:.0%} warm-up)"
    )
    if train.ema_epochs:
        text += (
            f"; the models validated and kept are an exponential moving average of the "
            f"weights over about {train.ema_epochs:g} epochs"
        )
    return text


def _augment_text(train: TrainParams) -> str:
    a = train.augment
    if not a.enabled:
        return "off"
    parts = [
        text
        for on, text in (
            (a.hflip, "horizontal flip"),
            (a.scale > 0, f"zoom ±{a.scale:.0%}"),
            (a.rotate > 0, f"rotation ±{a.rotate:g}°"),
            (a.color > 0, f"colour jitter {a.color:g}"),
        )
        if on
    ]
    return ", ".join(parts) if parts else "none (every switch off)"


def _hardware(train: TrainMetrics) -> str:
    details = [f"device {train.device}", f"{train.threads} CPU threads", train.precision]
    if train.world_size > 1:
        details.append(f"{train.world_size} processes (DDP)")
    return f"{train.hardware} ({', '.join(details)})"


def _per_arch(texts: Mapping[str, str]) -> str:
    values = set(texts.values())
    if len(values) == 1:
        return f"all architectures: {next(iter(values))}"
    return "; ".join(f"{a}: {t}" for a, t in texts.items())

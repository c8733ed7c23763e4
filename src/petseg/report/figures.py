"""The report's images: matplotlib charts of the evaluate outputs, and the evaluate stage's
prediction grids with their captions."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from petseg import CLASSES
from petseg.report.inputs import Inputs
from petseg.results import PER_IMAGE_INDEX


@dataclass(frozen=True)
class Chart:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: bytes


def charts(inputs: Inputs) -> list[Chart]:
    archs = inputs.archs
    return [
        Chart(
            "curves",
            "Training curves",
            "Validation mIoU, validation pixel accuracy, training loss and validation loss per "
            "epoch (plots/train/*.csv).",
            curves_chart(inputs.curves),
        ),
        Chart(
            "per_class",
            "Per-class IoU",
            "Test IoU of each class (plots/eval/per_class.csv).",
            per_class_chart(inputs.per_class, archs),
        ),
        Chart(
            "cost",
            "Training time vs accuracy",
            "Left: training seconds against test mIoU. "
            "Right: inference images per second (plots/eval/runtime.csv).",
            cost_chart(inputs.runtime, inputs.summary.values("miou")),
        ),
        Chart(
            "confusion",
            "Confusion matrices",
            "Share of each actual class predicted as each "
            "class, per architecture (plots/eval/confusion.csv).",
            confusion_chart(inputs.confusion, archs),
        ),
        Chart(
            "per_image",
            "Per-image mIoU",
            "Spread of the per-image test mIoU (plots/eval/per_image.csv).",
            per_image_chart(inputs.per_image, archs),
        ),
    ]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" stamp: the same inputs give byte-identical figures (stable DVC hashes).
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _colors(archs: Sequence[str]) -> dict[str, str]:
    return {a: f"C{i}" for i, a in enumerate(archs)}


def curves_chart(curves: Mapping[str, pd.DataFrame]) -> bytes:
    colors = _colors(list(curves))
    fig = Figure(figsize=(11, 7), layout="constrained")
    panels = (
        ("val_miou", "Validation mIoU"),
        ("val_pixel_acc", "Validation pixel accuracy"),
        ("train_loss", "Training loss"),
        ("val_loss", "Validation loss"),
    )
    for ax, (col, title) in zip(fig.subplots(2, 2).flat, panels, strict=True):
        for arch, df in curves.items():
            marker = "o" if len(df) <= 40 else None
            ax.plot(df["epoch"], df[col], marker=marker, ms=3, label=arch, color=colors[arch])
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=len(curves))
    return _png(fig)


def per_class_chart(per_class: pd.DataFrame, archs: Sequence[str]) -> bytes:
    colors, width = _colors(archs), 0.8 / len(archs)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(CLASSES))
    for k, arch in enumerate(archs):
        rows = per_class[per_class["arch"] == arch].set_index("class")
        values = [float(rows["iou"].get(c, np.nan)) for c in CLASSES]
        bars = ax.bar(
            x + (k - (len(archs) - 1) / 2) * width, values, width, label=arch, color=colors[arch]
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set(xticks=x, xticklabels=CLASSES, ylabel="test IoU", ylim=(0, 1.08))
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=len(archs))
    return _png(fig)


def cost_chart(runtime: pd.DataFrame, miou: Mapping[str, float]) -> bytes:
    archs = list(miou)
    colors = _colors(archs)
    rt = runtime.set_index("arch")
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for arch in archs:
        t = float(rt.loc[arch, "train_seconds"])
        left.scatter(t, miou[arch], s=60, color=colors[arch])
        left.annotate(
            f"{arch}\n{t:.1f} s, {miou[arch]:.4f}",
            (t, miou[arch]),
            fontsize=9,
            textcoords="offset points",
            xytext=(6, 4),
        )
    left.set(xlabel="training time (s)", ylabel="test mIoU", title="Training time vs accuracy")
    left.margins(x=0.35, y=0.25)
    left.grid(alpha=0.3)
    ips = [float(rt.loc[a, "inference_images_per_s"]) for a in archs]
    bars = right.bar(archs, ips, color=[colors[a] for a in archs])
    right.bar_label(bars, fmt="%.1f", fontsize=9)
    right.set(ylabel="images / s", title="Inference throughput (higher is faster)")
    right.margins(y=0.15)
    right.grid(axis="y", alpha=0.3)
    return _png(fig)


def confusion_chart(confusion: pd.DataFrame, archs: Sequence[str]) -> bytes:
    fig = Figure(figsize=(4 * len(archs), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(archs)))
    for ax, arch in zip(axes, archs, strict=True):
        rows = confusion[confusion["arch"] == arch].set_index(["actual", "predicted"])["fraction"]
        m = np.array([[float(rows.get((t, p), np.nan)) for p in CLASSES] for t in CLASSES])
        image = _confusion_panel(ax, m, arch)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the actual class")
    return _png(fig)


def _confusion_panel(ax: Axes, m: np.ndarray, arch: str) -> AxesImage:
    """One architecture's matrix of shares, each cell labelled; returns the image for the bar."""
    n = len(CLASSES)
    image = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    for t in range(n):
        for p in range(n):
            colour = "white" if m[t, p] > 0.6 else "black"
            ax.text(p, t, f"{m[t, p]:.0%}", ha="center", va="center", fontsize=9, color=colour)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="actual",
        title=arch,
    )
    return image


def per_image_chart(per_image: pd.DataFrame, archs: Sequence[str]) -> bytes:
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.boxplot([per_image[a].astype(float).dropna() for a in archs], tick_labels=list(archs))
    ax.set(
        ylabel="per-image mIoU",
        ylim=(0, 1.02),
        title=f"Per-image test mIoU ({len(per_image)} images)",
    )
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- regularization
def regularization_chart(experiments: pd.DataFrame) -> Chart:
    return Chart(
        "regularization",
        "Regularization variants",
        "Test mIoU per variant and architecture: marker and bar = mean ± std over seeds, dots "
        "= single runs, dashed = the baseline's mean (plots/experiments.csv).",
        _regularization_png(experiments),
    )


def _regularization_png(experiments: pd.DataFrame) -> bytes:
    """Test mIoU per variant (x) and architecture (colour): mean ± sample std as a marker with an
    error bar, each run as a faint dot, each architecture's baseline mean as a dashed line."""
    df = experiments.assign(
        variant=experiments["variant"].astype(str),
        arch=experiments["arch"].astype(str),
        miou=experiments["miou"].astype(float),
    )
    variants = list(dict.fromkeys(df["variant"]))
    archs = list(dict.fromkeys(df["arch"]))
    colors, width = _colors(archs), 0.6 / len(archs)
    fig = Figure(figsize=(max(7.0, 1.3 * len(variants) + 1.5), 4), layout="constrained")
    ax = fig.subplots()
    for k, arch in enumerate(archs):
        offset = (k - (len(archs) - 1) / 2) * width
        _variant_runs(ax, df[df["arch"] == arch], variants, offset, colors[arch], arch)
    ax.set(
        xticks=range(len(variants)),
        xticklabels=variants,
        ylabel="test mIoU",
        title="Test mIoU per regularization variant (dashed: baseline)",
    )
    ax.margins(x=0.08, y=0.2)
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.0))  # error bars must not suggest an mIoU below 0
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=len(archs))
    return _png(fig)


def _variant_runs(
    ax: Axes, runs: pd.DataFrame, variants: list[str], offset: float, colour: str, arch: str
) -> None:
    """One architecture's runs: mean ± std per variant, each run, its baseline mean."""
    stats = runs.groupby("variant", sort=False)["miou"].agg(["mean", "std"]).reindex(variants)
    ax.errorbar(
        np.arange(len(variants)) + offset, stats["mean"], yerr=stats["std"].fillna(0.0),
        fmt="o", ms=7, capsize=4, color=colour, label=arch,
    )  # fmt: skip
    ax.scatter(
        [variants.index(v) + offset for v in runs["variant"]], runs["miou"],
        s=14, color=colour, alpha=0.4, zorder=3,
    )  # fmt: skip
    if "baseline" in variants and math.isfinite(stats.loc["baseline", "mean"]):
        ax.axhline(stats.loc["baseline", "mean"], color=colour, lw=0.8, ls="--")


# ------------------------------------------------------------------------- prediction grids
@dataclass(frozen=True)
class Example:
    filename: str  # its stable name in plots/predictions, e.g. fixed_01.png
    kind: str  # fixed or hardest
    caption: str
    png: bytes


def examples(
    folder: Path, listed: pd.DataFrame, per_image: pd.DataFrame, archs: Sequence[str]
) -> list[Example]:
    """The evaluate stage's grid rows in the order ``listed`` (plots/eval/examples.csv) gives
    them, each captioned with its image and that image's mIoU per architecture (per_image.csv:
    the grid's file name carries no score, so that it stays the same across runs)."""
    scores = per_image.set_index(PER_IMAGE_INDEX)
    counts = listed["kind"].value_counts()
    out = []
    for row in listed.itertuples(index=False):
        name, kind = str(row.image), str(row.kind)
        caption = f"{kind} {row.rank} of {counts[kind]}: {name}"
        if name in scores.index:
            each = ", ".join(f"{a} {_score(float(scores.loc[name, a]))}" for a in archs)
            caption += f". Per-image mIoU: {each}"
        out.append(Example(str(row.file), kind, caption + ".", (folder / row.file).read_bytes()))
    return out


def _score(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a"

"""The ``report`` stage: tables, figures and a discussion computed from the evaluate outputs.

Two renderings of the same content are written atomically into one folder:

``index.html``  self-contained: inline CSS, every figure a base64 ``data:`` URI, no script and no
                external reference, so it can be mailed or opened offline.
``README.md``   Markdown for a repository browser, figures as PNG files under ``figures/``.

Every number comes from the metrics JSON and plot CSVs of the evaluate stage; the discussion is a
pure function of ``metrics/summary.json`` (:func:`discussion`) that states what the numbers show and
nothing more: verdicts depend on the sign and size of each difference, never on a fixed narrative.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from petseg import CLASSES, ERROR_COLOUR, PALETTE
from petseg.config import DataParams, ModelsParams, PreprocessParams, TrainParams
from petseg.errors import DataError
from petseg.fileio import atomic_dir

# A difference below half a point (0.005) is reported as "no measurable difference"; one between
# that and a point (0.01) is reported but flagged: a single seed can move mIoU by about that much.
NO_DIFFERENCE = 0.005
NOISE = 0.01
# Timings within 5 % of the fastest are called equally fast: single measurements vary that much.
SAME_SPEED = 0.05

# Colours of the prediction grids, as hex for the legend.
LEGEND = {c: "#{:02x}{:02x}{:02x}".format(*rgb) for c, rgb in zip(CLASSES, PALETTE, strict=True)}
ERROR_HEX = "#{:02x}{:02x}{:02x}".format(*ERROR_COLOUR)
LEGEND_WORDS = {"pet": "orange", "background": "dark grey", "border": "pale yellow"}

SOURCES = {
    "oxford-iiit-pet": "Oxford-IIIT Pet (official archives)",
    "synthetic": "synthetic pets-like scenes (offline demo data, not photographs)",
    "folder": "Oxford-IIIT Pet layout read from an extracted folder",
    "coco": "your COCO-annotated images, converted to the Oxford-IIIT Pet layout",
}

HINT = "run dvc repro evaluate"


@dataclass(frozen=True)
class ReportPaths:
    summary: Path  # metrics/summary.json
    test_metrics: Path  # metrics/test/<arch>.json
    train_metrics: Path  # metrics/train/<arch>.json
    train_plots: Path  # plots/train/<arch>.csv
    eval_plots: Path  # plots/eval/{confusion,per_class,runtime,per_image}.csv
    predictions: Path  # plots/predictions/*.png
    manifest: Path  # data/prepared/manifest.json
    out: Path  # report/: index.html, README.md, figures/
    experiments: Path | None = None  # plots/experiments.csv; absent = no experiments were run


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Inputs:
    summary: dict[str, Any]
    test: dict[str, dict[str, Any]]  # arch -> metrics/test/<arch>.json
    train: dict[str, dict[str, Any]]  # arch -> metrics/train/<arch>.json
    curves: dict[str, pd.DataFrame]  # arch -> plots/train/<arch>.csv
    confusion: pd.DataFrame
    per_class: pd.DataFrame
    runtime: pd.DataFrame
    per_image: pd.DataFrame
    predictions: list[Path]
    manifest: dict[str, Any]
    experiments: pd.DataFrame | None

    @property
    def archs(self) -> list[str]:
        return list(self.summary["architectures"])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: {HINT}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): {HINT}") from None


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found: {HINT}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}): {HINT}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks the columns {', '.join(missing)}: {HINT}")
    return df


def _require(obj: Mapping[str, Any], keys: Sequence[str], path: Path) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: {HINT}")


SUMMARY_KEYS = ("miou", "train_seconds", "inference_images_per_s", "params") + tuple(
    f"iou_{c}" for c in CLASSES
)
TEST_KEYS = (
    "miou",
    "pixel_accuracy",
    "iou",
    "mean_dice",
    "binary_pet_iou",
    "params",
    "gflops_per_image",
    "train_seconds",
    "inference_images_per_s",
)


def load_inputs(paths: ReportPaths) -> Inputs:
    """Read every input; a missing or malformed one is a :class:`DataError` naming the file."""
    summary = _read_json(paths.summary)
    _require(summary, ["architectures"], paths.summary)
    if not summary["architectures"]:
        raise DataError(f"{paths.summary} lists no architectures: {HINT}")
    for arch, row in summary["architectures"].items():
        _require(row, SUMMARY_KEYS, paths.summary.with_name(f"{paths.summary.name}[{arch}]"))
    archs = list(summary["architectures"])
    test = {a: _read_json(paths.test_metrics / f"{a}.json") for a in archs}
    for a, res in test.items():
        _require(res, TEST_KEYS, paths.test_metrics / f"{a}.json")
    train = {a: _read_json(paths.train_metrics / f"{a}.json") for a in archs}
    curves = {
        a: _read_csv(
            paths.train_plots / f"{a}.csv", ["epoch", "train_loss", "val_loss", "val_miou"]
        )
        for a in archs
    }
    ev = paths.eval_plots
    confusion = _read_csv(ev / "confusion.csv", ["arch", "actual", "predicted", "fraction"])
    per_class = _read_csv(ev / "per_class.csv", ["arch", "class", "iou"])
    runtime = _read_csv(ev / "runtime.csv", ["arch", "train_seconds", "inference_images_per_s"])
    per_image = _read_csv(ev / "per_image.csv", ["image", *archs])
    if not paths.predictions.is_dir():
        raise DataError(f"{paths.predictions} not found: {HINT}")
    manifest = _read_json(paths.manifest)
    _require(manifest, ["counts"], paths.manifest)
    experiments = None
    if paths.experiments is not None and paths.experiments.exists():
        experiments = _read_csv(paths.experiments, ["variant", "arch", "miou"])
        if experiments.empty:  # the committed header-only file: no sweep has run yet
            experiments = None
    return Inputs(
        summary=summary,
        test=test,
        train=train,
        curves=curves,
        confusion=confusion,
        per_class=per_class,
        runtime=runtime,
        per_image=per_image,
        predictions=sorted(paths.predictions.glob("*.png")),
        manifest=manifest,
        experiments=experiments,
    )


# -------------------------------------------------------------------------------- discussion
def _pts(d: float) -> str:
    return f"{abs(d) * 100:.2f} points"


def _signed(d: float) -> str:
    return f"{d * 100:+.2f} points"


def _noise(d: float) -> str:
    """A flag on differences that are measurable but small enough for one seed to explain."""
    return ", within the ~1-point noise of a single seed" if NO_DIFFERENCE <= abs(d) < NOISE else ""


def _evidence(iv: Mapping[str, Any] | None, key: str, a: str, b: str, d: float) -> str:
    """What backs a difference ``d`` = a - b in ``key`` (``miou`` or ``iou_border``): its paired
    bootstrap interval over test images when evaluate computed one (metrics/summary.json
    ``intervals``), else the fixed noise flag of :func:`_noise`."""
    diff = (iv or {}).get("diff", {})
    if f"{a}-{b}" in diff and key in diff[f"{a}-{b}"]:
        low, high = diff[f"{a}-{b}"][key]["low"], diff[f"{a}-{b}"][key]["high"]
    elif f"{b}-{a}" in diff and key in diff[f"{b}-{a}"]:
        low, high = -diff[f"{b}-{a}"][key]["high"], -diff[f"{b}-{a}"][key]["low"]
    else:
        return _noise(d)
    if not (math.isfinite(low) and math.isfinite(high)):
        return _noise(d)
    text = (
        f"; {iv['level'] * 100:g}% interval {low * 100:+.2f} to {high * 100:+.2f} points over "
        "resampled test images"
    )
    return text + (", which includes no difference" if low <= 0 <= high else "")


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _ranked(values: Mapping[str, float]) -> list[str]:
    """Keys by decreasing value; ties keep their order (the architecture order)."""
    return sorted(values, key=lambda k: -values[k])


def _tied(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-12)


def _verdict(d: float) -> str:
    if d >= NO_DIFFERENCE:
        return "helped"
    if d <= -NO_DIFFERENCE:
        return "did not help"
    return "made no measurable difference"


def _ranking(
    archs: Mapping[str, Mapping[str, float]], iv: Mapping[str, Any] | None = None
) -> list[str]:
    miou = _finite({a: r["miou"] for a, r in archs.items()})
    order = _ranked(miou)
    if len(order) < 2:
        return [f"Only {_join(order) or 'no architecture'} has a test mIoU: nothing to compare."]
    best, runner, worst = order[0], order[1], order[-1]
    gap, gap_worst = miou[best] - miou[runner], miou[best] - miou[worst]
    others = order[1:]
    ev = _evidence(iv, "miou", best, runner, gap)  # of the lead over the runner-up
    if len(others) > 1 and _tied(miou[runner], miou[worst]):
        behind = f"{_pts(gap)} ahead of both {_join(others)} ({miou[runner]:.4f} each{ev})"
    elif len(others) > 1:
        behind = (
            f"{_pts(gap)} ahead of the runner-up {runner} ({miou[runner]:.4f}{ev}) and "
            f"{_pts(gap_worst)} ahead of the worst, {worst} ({miou[worst]:.4f})"
        )
    else:
        behind = f"{_pts(gap)} ahead of {runner} ({miou[runner]:.4f}{ev})"
    if _tied(gap, 0.0):
        leaders = [a for a in order if _tied(miou[a], miou[best])]
        text = f"{_join(leaders)} tie for the best test mIoU ({miou[best]:.4f})"
        if len(leaders) < len(order):
            text += f"; {worst} is {_pts(gap_worst)} behind ({miou[worst]:.4f})"
        return [text + "."]
    if gap < NO_DIFFERENCE:
        text = (
            f"{best} has the highest test mIoU ({miou[best]:.4f}), but only {_pts(gap)} above "
            f"{runner} ({miou[runner]:.4f}): no measurable difference between them"
        )
        if len(others) > 1:
            text += f"; the worst, {worst} ({miou[worst]:.4f}), is {_pts(gap_worst)} behind"
        return [text + "."]
    return [f"{best} is the best architecture on test mIoU ({miou[best]:.4f}), {behind}."]


def _per_class(
    archs: Mapping[str, Mapping[str, float]], iv: Mapping[str, Any] | None = None
) -> list[str]:
    parts, iou = [], {}
    for c in CLASSES:
        iou[c] = _finite({a: r[f"iou_{c}"] for a, r in archs.items()})
        if not iou[c]:
            parts.append(f"{c}: undefined for every architecture")
            continue
        order = _ranked(iou[c])
        top = iou[c][order[0]]
        leaders = [a for a in order if _tied(iou[c][a], top)]
        if len(leaders) == len(order) > 1:
            parts.append(f"{c}: all tie ({top:.4f})")
        elif len(leaders) > 1:
            parts.append(f"{c}: {_join(leaders)} tie ({top:.4f})")
        else:
            parts.append(f"{c}: {leaders[0]} ({top:.4f})")
    out = ["Best IoU per class: " + "; ".join(parts) + "."]

    border = iou["border"]
    if len(border) >= 2:
        first, second = _ranked(border)[:2]
        gap = border[first] - border[second]
        if border[first] == 0:
            out.append("No architecture gets a single border pixel right (border IoU 0 for all).")
        elif gap >= NO_DIFFERENCE:
            out.append(
                f"On the border class (the thin band around each outline) {first} leads with IoU "
                f"{border[first]:.4f}, {_pts(gap)} above {second} ({border[second]:.4f})"
                f"{_evidence(iv, 'iou_border', first, second, gap)}."
            )
        else:
            out.append(
                f"On the border class no architecture leads measurably: {first} {border[first]:.4f}"
                f" vs {second} {border[second]:.4f} ({_pts(gap)} apart)."
            )
    lowest = {
        a: min(CLASSES, key=lambda c, r=r: r[f"iou_{c}"])
        for a, r in archs.items()
        if all(math.isfinite(r[f"iou_{c}"]) for c in CLASSES)
    }
    if lowest and len(set(lowest.values())) == 1:
        c = next(iter(lowest.values()))
        out.append(f"{c.capitalize()} is the lowest-scoring class for every architecture.")
    elif lowest:
        detail = ", ".join(f"{a}: {c}" for a, c in lowest.items())
        out.append(f"The lowest-scoring class differs between architectures ({detail}).")
    return out


def _skips(
    archs: Mapping[str, Mapping[str, float]], iv: Mapping[str, Any] | None = None
) -> list[str]:
    """U-Net against the better (per metric) of the two networks without skip connections."""
    out = []
    for key, what in (("miou", "mIoU"), ("iou_border", "border IoU")):
        ref = max(("strided", "unpool"), key=lambda a: archs[a][key])
        u, r = archs["unet"][key], archs[ref][key]
        d = u - r
        out.append(
            f"Skip connections {_verdict(d)} on {what}: unet {u:.4f} against {r:.4f} for {ref}, "
            f"the better network without skips ({_signed(d)}{_evidence(iv, key, 'unet', ref, d)})."
        )
    return out


def _resampling(
    archs: Mapping[str, Mapping[str, float]], upsample: str, iv: Mapping[str, Any] | None = None
) -> list[str]:
    """unpool vs strided: pooling indices (or nearest) against learned transposed convolutions."""

    def compare(d: float) -> str:
        if d >= NO_DIFFERENCE:
            return "beats"
        return "trails" if d <= -NO_DIFFERENCE else "is level with"

    u, s = archs["unpool"], archs["strided"]
    dm, db = u["miou"] - s["miou"], u["iou_border"] - s["iou_border"]
    if upsample == "indices":
        head, how = "Pooling indices vs learned upsampling", "unpooling with the pooling indices"
    else:
        head = "Nearest vs learned upsampling"
        how = f"nearest-neighbour upsampling, models.unpool.upsample = {upsample}: no indices"
    return [
        f"{head}: unpool ({how}) {compare(dm)} strided (transposed convolutions) on mIoU, "
        f"{u['miou']:.4f} vs {s['miou']:.4f} "
        f"({_signed(dm)}{_evidence(iv, 'miou', 'unpool', 'strided', dm)}), and {compare(db)} it "
        f"on border IoU, {u['iou_border']:.4f} vs {s['iou_border']:.4f} "
        f"({_signed(db)}{_evidence(iv, 'iou_border', 'unpool', 'strided', db)}).",
        "The two also differ in down-sampling (max-pooling vs stride-2 convolutions) and in size "
        f"({u['params'] / 1e6:.3f} M vs {s['params'] / 1e6:.3f} M parameters), so this compares the"
        " whole resampling design, not the upsampling alone.",
    ]


def _fastest(values: Mapping[str, float], higher: bool, what: str, unit: str) -> str:
    """Who is fastest; timings within SAME_SPEED of the fastest are reported as a tie."""
    order = sorted(values, key=lambda a: -values[a] if higher else values[a])
    top = values[order[0]]
    group = [a for a in order if abs(values[a] - top) <= SAME_SPEED * abs(top)]
    if len(group) > 1:
        each = ", ".join(f"{a} {values[a]:.1f}{unit}" for a in group)
        return (
            f"{_join(group)} are equally fast {what} (within {SAME_SPEED:.0%} of the fastest: "
            f"{each})."
        )
    nxt = order[1]
    return (
        f"{order[0]} is the fastest {what} ({top:.1f}{unit}; next {nxt} {values[nxt]:.1f}{unit})."
    )


def _cost(archs: Mapping[str, Mapping[str, float]]) -> list[str]:
    t = {a: r["train_seconds"] for a, r in archs.items()}
    ips = {a: r["inference_images_per_s"] for a, r in archs.items()}
    miou = {a: r["miou"] for a, r in archs.items()}
    if len(archs) < 2:
        return []
    out = [_fastest(t, False, "to train", " s"), _fastest(ips, True, "at inference", " images/s")]
    fast_t, fast_i, best = min(t, key=t.get), max(ips, key=ips.get), max(miou, key=miou.get)
    extra, d = t[best] - t[fast_t], miou[best] - miou[fast_t]
    if extra <= SAME_SPEED * t[fast_t]:
        out.append(
            f"The most accurate network, {best}, trains as fast as any other: here accuracy "
            "costs no extra training time."
        )
    elif d < NO_DIFFERENCE:
        out.append(
            f"{best}, the most accurate, takes {extra:.1f} s more to train than {fast_t} "
            f"({t[best] / t[fast_t]:.1f}× the time) for no measurable mIoU gain ({_signed(d)})."
        )
    else:
        out.append(
            f"{best}, the most accurate, takes {extra:.1f} s more to train than {fast_t} "
            f"({t[best] / t[fast_t]:.1f}× the time) for {_pts(d)} more mIoU: "
            f"{extra / (d * 100):.1f} extra seconds per mIoU point."
        )
    if ips[best] > 0 and ips[fast_i] - ips[best] > SAME_SPEED * ips[fast_i]:
        out.append(
            f"At inference {best} processes {ips[best]:.1f} images/s, "
            f"{ips[fast_i] / ips[best]:.2f}× slower than {fast_i}."
        )
    return out


def _caveats(
    counts: Mapping[str, int], data_source: str, seed: int, iv: Mapping[str, Any] | None = None
) -> list[str]:
    n_test = counts.get("test", 0)
    few = (
        "; with so few test images a handful of hard cases can move every score"
        if n_test < 500
        else ""
    )
    if iv:
        seeds = (
            f"Caveats: each architecture was trained once (seed {seed}). The intervals "
            f"({iv['level'] * 100:g}%, paired bootstrap: {iv['resamples']} resamples of the "
            f"{iv['over']}) say how much a difference depends on which test images were drawn; "
            "they leave out how much a second training seed would move it, which on small "
            "training sets can be as much again."
        )
    else:
        seeds = (
            f"Caveats: each architecture was trained once (seed {seed}), so differences below "
            f"about {NOISE * 100:g} point of mIoU may be noise rather than a property of the "
            "architecture."
        )
    out = [
        seeds,
        f"The scores come from {n_test} test images (the networks learned from "
        f"{counts.get('train', 0)} training and {counts.get('val', 0)} validation images){few}.",
    ]
    if data_source == "synthetic":
        out.append(
            "The data are synthetic (data.source = synthetic): generated scenes, not photographs, "
            "so these results say nothing about real pets."
        )
    out.append("Timings were measured once, on one machine; they rank the networks there only.")
    return out


def discussion(
    summary: Mapping[str, Any],
    *,
    counts: Mapping[str, int],
    data_source: str,
    seed: int = 0,
    unpool_upsample: str = "indices",
) -> list[str]:
    """Sentences that state what ``summary`` (metrics/summary.json) shows, with honest caveats.

    ``counts``: images per split (manifest ``counts``); ``data_source``: ``data.source``;
    ``seed``: ``train.seed``; ``unpool_upsample``: ``models.unpool.upsample``.
    """
    archs, iv = summary["architectures"], summary.get("intervals")
    out = _ranking(archs, iv) + _per_class(archs, iv)
    if {"strided", "unpool", "unet"} <= archs.keys():
        out += _skips(archs, iv)
    if {"strided", "unpool"} <= archs.keys():
        out += _resampling(archs, unpool_upsample, iv)
    return out + _cost(archs) + _caveats(counts, data_source, seed, iv)


# ------------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    best: frozenset[tuple[int, int]] = frozenset()  # (row, column) cells marked best
    numeric_from: int = 1  # columns from here on are right-aligned


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[Mapping[str, Any]], float]
    fmt: str
    higher_is_better: bool = True


def metric_columns(test: Mapping[str, Mapping[str, Any]]) -> list[Column]:
    cols = [
        Column("mIoU", lambda r: r["miou"], ".4f"),
        Column("Pixel acc.", lambda r: r["pixel_accuracy"], ".4f"),
        *(Column(f"IoU {c}", lambda r, c=c: r["iou"][c], ".4f") for c in CLASSES),
        Column("Mean Dice", lambda r: r["mean_dice"], ".4f"),
        Column("Binary pet IoU", lambda r: r["binary_pet_iou"], ".4f"),
    ]
    if all("original_resolution" in r for r in test.values()):
        cols.append(Column("mIoU orig. res.", lambda r: r["original_resolution"]["miou"], ".4f"))
    return cols + [
        Column("Params (M)", lambda r: r["params"] / 1e6, ".3f", higher_is_better=False),
        Column("GFLOPs/img", lambda r: r["gflops_per_image"], ".4f", higher_is_better=False),
        Column("Train s", lambda r: r["train_seconds"], ".1f", higher_is_better=False),
        Column("Inference img/s", lambda r: r["inference_images_per_s"], ".1f"),
    ]


def _fmt(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "n/a"


def metrics_table(test: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per architecture. The best cell per column is compared as displayed (rounded), so
    values that print the same are all marked."""
    cols = metric_columns(test)
    archs = list(test)
    rows = [[a] + [_fmt(float(c.value(test[a])), c.fmt) for c in cols] for a in archs]
    best = set()
    for j, c in enumerate(cols, start=1):
        shown = {i: float(rows[i][j]) for i in range(len(archs)) if rows[i][j] != "n/a"}
        if shown:
            target = (max if c.higher_is_better else min)(shown.values())
            best |= {(i, j) for i, v in shown.items() if v == target}
    arrows = [f"{c.title} {'↑' if c.higher_is_better else '↓'}" for c in cols]
    return Table(["Architecture", *arrows], rows, frozenset(best))


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


# ----------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class Chart:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: bytes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" stamp: the same inputs give byte-identical figures (stable DVC hashes).
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _colors(archs: Sequence[str]) -> dict[str, str]:
    return {a: f"C{i}" for i, a in enumerate(archs)}


def curves_chart(curves: Mapping[str, pd.DataFrame]) -> bytes:
    colors = _colors(list(curves))
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    panels = (
        ("val_miou", "Validation mIoU"),
        ("train_loss", "Training loss"),
        ("val_loss", "Validation loss"),
    )
    for ax, (col, title) in zip(fig.subplots(1, 3), panels, strict=True):
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
    n = len(CLASSES)
    for ax, arch in zip(axes, archs, strict=True):
        rows = confusion[confusion["arch"] == arch].set_index(["actual", "predicted"])["fraction"]
        m = np.array([[float(rows.get((t, p), np.nan)) for p in CLASSES] for t in CLASSES])
        image = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        for t in range(n):
            for p in range(n):
                ax.text(
                    p,
                    t,
                    f"{m[t, p]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if m[t, p] > 0.6 else "black",
                )
        ax.set(
            xticks=range(n),
            yticks=range(n),
            xticklabels=CLASSES,
            yticklabels=CLASSES,
            xlabel="predicted",
            ylabel="actual",
            title=arch,
        )
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the actual class")
    return _png(fig)


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


def charts(inputs: Inputs) -> list[Chart]:
    archs = inputs.archs
    miou = {a: float(r["miou"]) for a, r in inputs.summary["architectures"].items()}
    return [
        Chart(
            "curves",
            "Training curves",
            "Validation mIoU, training loss and validation loss per epoch (plots/train/*.csv).",
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
            cost_chart(inputs.runtime, miou),
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


def regularization_chart(experiments: pd.DataFrame) -> bytes:
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
        runs = df[df["arch"] == arch]
        stats = runs.groupby("variant", sort=False)["miou"].agg(["mean", "std"]).reindex(variants)
        ax.errorbar(
            np.arange(len(variants)) + offset, stats["mean"], yerr=stats["std"].fillna(0.0),
            fmt="o", ms=7, capsize=4, color=colors[arch], label=arch,
        )  # fmt: skip
        ax.scatter(
            [variants.index(v) + offset for v in runs["variant"]], runs["miou"],
            s=14, color=colors[arch], alpha=0.4, zorder=3,
        )  # fmt: skip
        if "baseline" in variants and math.isfinite(stats.loc["baseline", "mean"]):
            ax.axhline(stats.loc["baseline", "mean"], color=colors[arch], lw=0.8, ls="--")
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


# ------------------------------------------------------------------------- prediction grid
@dataclass(frozen=True)
class Example:
    filename: str
    caption: str
    png: bytes


_GRID_NAME = re.compile(r"^\d+_(?P<image>.+)_miou(?P<miou>[-+.\w]+)\.png$")


def examples(
    predictions: Sequence[Path], per_image: pd.DataFrame, archs: Sequence[str]
) -> list[Example]:
    """The evaluate stage's grid rows, captioned with the image name and its per-image mIoU."""
    scores = per_image.set_index("image")
    out = []
    for path in predictions:
        match = _GRID_NAME.match(path.name)
        if match is None:
            caption = path.name
        else:
            name = match["image"]
            caption = f"{name}: min mIoU {match['miou']}"
            if name in scores.index:
                each = ", ".join(f"{a} {float(scores.loc[name, a]):.2f}" for a in archs)
                caption += f" (per architecture: {each})"
        out.append(Example(path.name, caption, path.read_bytes()))
    return out


# ------------------------------------------------------------------------------------- setup
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


def _hardware(train_metrics: Mapping[str, Any]) -> str:
    """metrics/train/<arch>.json: hardware, device, threads, world_size (older runs lack some)."""
    details = [f"device {train_metrics['device']}"] if "device" in train_metrics else []
    if "threads" in train_metrics:
        details.append(f"{train_metrics['threads']} CPU threads")
    if "precision" in train_metrics:
        details.append(train_metrics["precision"])
    if train_metrics.get("world_size", 1) > 1:
        details.append(f"{train_metrics['world_size']} processes (DDP)")
    text = train_metrics.get("hardware", "hardware not recorded")
    return f"{text} ({', '.join(details)})" if details else text


def _per_arch(texts: Mapping[str, str]) -> str:
    values = set(texts.values())
    if len(values) == 1:
        return f"all architectures: {next(iter(values))}"
    return "; ".join(f"{a}: {t}" for a, t in texts.items())


def setup_rows(
    inputs: Inputs,
    data: DataParams,
    preprocess: PreprocessParams,
    train: TrainParams,
    models: ModelsParams,
) -> list[tuple[str, str]]:
    counts = inputs.manifest["counts"]
    source = SOURCES.get(data.source, data.source)
    split = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("train", "val", "test"))
    skipped = len(inputs.manifest.get("skipped", []))
    freq = inputs.manifest.get("splits", {}).get("test", {}).get("class_frequencies")
    size = preprocess.image_size
    rows = [
        ("Data", f"{source}; data.source = {data.source}"),
        ("Images per split", split + (f"; {skipped} unusable files skipped" if skipped else "")),
    ]
    if freq:
        shares = ", ".join(f"{c} {freq[c]:.1%}" for c in CLASSES if c in freq)
        rows.append(("Test pixels per class", shares))
    arch_text = {
        a: f"depth {m.depth}, base width {m.base_width}, dropout {m.dropout:g}, {m.block} blocks"
        + (f" with {m.bottleneck}× bottleneck" if m.bottleneck > 1 else "")
        for a in inputs.archs
        if (m := getattr(models, a, None)) is not None
    }
    hardware = {a: _hardware(t) for a, t in inputs.train.items()}
    weights = train.class_weights or "equal"
    rows += [
        ("Image size", f"{size}×{size} px; mIoU orig. res. scores each test image at its own size"),
        ("Models", _per_arch(arch_text) + f"; unpool upsampling: {models.unpool.upsample}"),
        (
            "Optimisation",
            f"{train.epochs} epochs, batch {train.batch_size}, AdamW peak lr "
            f"{train.lr:g}, weight decay {train.weight_decay:g}, {train.schedule} schedule "
            f"({train.warmup_fraction:.0%} warm-up)"
            + (
                f"; the models validated and kept are an exponential moving average of the "
                f"weights over about {train.ema_epochs:g} epochs"
                if train.ema_epochs
                else ""
            ),
        ),
        (
            "Loss",
            f"cross-entropy, class weights {weights}, label smoothing "
            f"{train.label_smoothing:g}, Dice weight {train.dice_weight:g}",
        ),
        ("Augmentation", _augment_text(train)),
        ("Seed", f"{train.seed} (one run per architecture)"),
        ("Hardware", _per_arch(hardware)),
    ]
    return rows


# -------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Report:
    setup: list[tuple[str, str]]
    metrics: Table
    discussion: list[str]
    charts: list[Chart]
    archs: list[str]
    examples: list[Example]
    regularization: Table | None
    regularization_chart: Chart | None = None


TITLE = "petseg: strided vs unpool vs U-Net on Oxford-IIIT Pet trimaps"
METRICS_NOTE = (
    "Test split at the training resolution unless noted. ↑ higher is better, ↓ lower is better; "
    "the best value of each column is in bold with ★."
)
REG_NOTE = (
    "Test mIoU per regularization variant and architecture: mean ± sample standard deviation over "
    "runs (seeds). baseline trains without augmentation, dropout, weight decay or label smoothing; "
    "each variant turns one of them on, all turns on all four (DVC experiments of make sweep, "
    "collected from dvc exp show into plots/experiments.csv)."
)
NO_REG = (
    "No regularization experiments were run (plots/experiments.csv is absent or empty): "
    "make sweep runs them."
)


def _grid_intro(archs: Sequence[str]) -> str:
    order = " | ".join(["input", "ground truth", *archs])
    return (
        f"Each row: {order}. Under each prediction, its error map: the input dimmed to grey, "
        f"every wrongly labelled pixel in red ({ERROR_HEX}). Rows are the evaluate stage's "
        "examples (fixed test images and the hardest ones); the caption gives the image name "
        "and its lowest per-image mIoU over the architectures."
    )


def _legend_text() -> str:
    return ", ".join(f"{c} {LEGEND_WORDS[c]} ({LEGEND[c]})" for c in CLASSES)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #fff4d6; }
table.setup th { text-align: left; vertical-align: top; white-space: nowrap; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
img.grid { image-rendering: pixelated; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #888;
          vertical-align: middle; margin: 0 .3em 0 .8em; }
.note { color: #555; font-size: .9em; }
"""


def _html_table(table: Table, cls: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, cell in enumerate(row):
            classes = (["num"] if j >= table.numeric_from else []) + (
                ["best"] if (i, j) in table.best else []
            )
            attr = f' class="{" ".join(classes)}"' if classes else ""
            text = f"<strong>{e(cell)} ★</strong>" if (i, j) in table.best else e(cell)
            cells.append(f"<td{attr}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{cls}">\n<tr>{head}</tr>\n' + "\n".join(body) + "\n</table>"


def _html_figure(chart: Chart) -> str:
    e = html.escape
    return (
        f'<figure id="{chart.name}"><img src="{_data_uri(chart.png)}" alt="{e(chart.title)}">'
        f"<figcaption><b>{e(chart.title)}.</b> {e(chart.caption)}</figcaption></figure>"
    )


def render_html(report: Report) -> str:
    e = html.escape
    setup = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in report.setup)
    legend = "".join(
        f'<span class="swatch" style="background:{LEGEND[c]}"></span>{e(c)} ({LEGEND_WORDS[c]})'
        for c in CLASSES
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{e(TITLE)}</title><style>{CSS}</style></head>',
        "<body>",
        f"<h1>{e(TITLE)}</h1>",
        '<p class="note">Generated by the report stage from metrics/, plots/ and '
        "data/prepared/manifest.json. Self-contained: every figure is embedded.</p>",
        "<h2>Setup</h2>",
        f'<table class="setup">\n{setup}\n</table>',
        "<h2>Test metrics</h2>",
        f'<p class="note">{e(METRICS_NOTE)}</p>',
        _html_table(report.metrics, "metrics"),
        "<h2>Discussion</h2>",
        '<ul class="discussion">',
        *(f"<li>{e(s)}</li>" for s in report.discussion),
        "</ul>",
        "<h2>Figures</h2>",
    ]
    parts += [_html_figure(chart) for chart in report.charts]
    parts += [
        "<h2>Predictions</h2>",
        f"<p>{e(_grid_intro(report.archs))}</p>",
        f"<p>Colours:{legend}</p>",
    ]
    if not report.examples:
        parts.append("<p>The evaluate stage wrote no prediction images.</p>")
    for ex in report.examples:
        parts.append(
            f'<figure><img class="grid" src="{_data_uri(ex.png)}" alt="{e(ex.filename)}">'
            f"<figcaption>{e(ex.caption)}</figcaption></figure>"
        )
    parts.append("<h2>Regularization</h2>")
    if report.regularization is None:
        parts.append(f"<p>{e(NO_REG)}</p>")
    else:
        parts += [
            f'<p class="note">{e(REG_NOTE)}</p>',
            _html_table(report.regularization, "regularization"),
        ]
        if report.regularization_chart is not None:
            parts.append(_html_figure(report.regularization_chart))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(table: Table) -> str:
    align = ["---" if j < table.numeric_from else "--:" for j in range(len(table.header))]
    lines = ["| " + " | ".join(map(_md_cell, table.header)) + " |", "|" + "|".join(align) + "|"]
    for i, row in enumerate(table.rows):
        cells = [
            f"**{_md_cell(c)} ★**" if (i, j) in table.best else _md_cell(c)
            for j, c in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_figure(chart: Chart) -> list[str]:
    image = f"![{chart.title}](figures/{chart.name}.png)"
    return [image, "", f"*{chart.title}.* {chart.caption}", ""]


def render_markdown(report: Report) -> str:
    lines = [
        f"# {TITLE}",
        "",
        "Generated by the report stage; a self-contained version with the "
        "same content is `index.html`.",
        "",
        "## Setup",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| **{_md_cell(k)}** | {_md_cell(v)} |" for k, v in report.setup]
    lines += ["", "## Test metrics", "", METRICS_NOTE, "", _md_table(report.metrics), ""]
    lines += ["## Discussion", "", *(f"- {s}" for s in report.discussion), "", "## Figures", ""]
    for chart in report.charts:
        lines += _md_figure(chart)
    lines += [
        "## Predictions",
        "",
        _grid_intro(report.archs),
        "",
        f"Colours: {_legend_text()}.",
        "",
    ]
    if not report.examples:
        lines += ["The evaluate stage wrote no prediction images.", ""]
    for ex in report.examples:
        lines += [f"![{ex.filename}](figures/predictions/{ex.filename})", "", ex.caption, ""]
    lines += ["## Regularization", ""]
    if report.regularization is None:
        lines += [NO_REG, ""]
    else:
        lines += [REG_NOTE, "", _md_table(report.regularization), ""]
        if report.regularization_chart is not None:
            lines += _md_figure(report.regularization_chart)
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- stage
def build_report(
    paths: ReportPaths,
    data: DataParams,
    preprocess: PreprocessParams,
    train: TrainParams,
    models: ModelsParams,
) -> Path:
    """Read the evaluate outputs, write ``paths.out`` atomically; returns the index.html path."""
    inputs = load_inputs(paths)
    report = Report(
        setup=setup_rows(inputs, data, preprocess, train, models),
        metrics=metrics_table(inputs.test),
        discussion=discussion(
            inputs.summary,
            counts=inputs.manifest["counts"],
            data_source=data.source,
            seed=train.seed,
            unpool_upsample=models.unpool.upsample,
        ),
        charts=charts(inputs),
        archs=inputs.archs,
        examples=examples(inputs.predictions, inputs.per_image, inputs.archs),
        regularization=None
        if inputs.experiments is None
        else regularization_table(inputs.experiments),
        regularization_chart=None
        if inputs.experiments is None
        else Chart(
            "regularization",
            "Regularization variants",
            "Test mIoU per variant and architecture: marker and bar = mean ± std over seeds, dots "
            "= single runs, dashed = the baseline's mean (plots/experiments.csv).",
            regularization_chart(inputs.experiments),
        ),
    )
    with atomic_dir(paths.out) as tmp:
        figures = tmp / "figures"
        (figures / "predictions").mkdir(parents=True)
        for chart in [*report.charts, report.regularization_chart]:
            if chart is not None:
                (figures / f"{chart.name}.png").write_bytes(chart.png)
        for ex in report.examples:
            (figures / "predictions" / ex.filename).write_bytes(ex.png)
        (tmp / "index.html").write_text(render_html(report), encoding="utf-8")
        (tmp / "README.md").write_text(render_markdown(report), encoding="utf-8")
    return paths.out / "index.html"

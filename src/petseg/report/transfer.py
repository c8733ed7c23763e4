"""The report's "From scratch vs pretrained" section: encoders and their starting weights side by
side, with parameters, GFLOPs, time and test scores.

Its rows come from the experiments of ``make transfer`` (plots/transfer.csv) and from this
report's own networks whenever one of them is built on a backbone (``models.<arch>.encoder``);
the section is left out when neither has one. Several seeds of one setting are averaged.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from petseg.config import ARCH_SECTIONS, ModelsParams
from petseg.report.tables import Table
from petseg.results import TRANSFER_COLUMNS, TestMetrics

PIPELINE, EXPERIMENTS = "dvc repro", "make transfer"  # where a row comes from
KEYS = ["from", "arch", "encoder", "pretrained"]
# Column title, field of the rows, format, unit.
SHOWN = (
    ("Params (M)", "params", ".2f", 1e6),
    ("GFLOPs/img", "gflops_per_image", ".3f", 1.0),
    ("Train s", "train_seconds", ".0f", 1.0),
    ("s/epoch", "seconds_per_epoch", ".2f", 1.0),
    ("mIoU", "miou", ".4f", 1.0),
    ("Binary pet IoU", "binary_pet_iou", ".4f", 1.0),
    ("Border IoU", "iou_border", ".4f", 1.0),
    ("Boundary IoU", "boundary_iou", ".4f", 1.0),
)


def own_rows(test: Mapping[str, TestMetrics], models: ModelsParams, seed: int) -> pd.DataFrame:
    """This report's networks as rows of plots/transfer.csv, all of them if one has a backbone,
    else none."""
    archs = [a for a in test if a in ARCH_SECTIONS]
    if all(models.of(a).encoder == "scratch" for a in archs):
        return pd.DataFrame(columns=list(TRANSFER_COLUMNS))
    rows = [
        {"experiment": "workspace", "arch": a, "encoder": models.of(a).encoder,
         "pretrained": models.of(a).pretrained, "seed": seed, "epochs": t.epochs,
         "params": t.params, "gflops_per_image": t.gflops_per_image,
         "train_seconds": t.train_seconds, "miou": t.miou, "binary_pet_iou": t.binary_pet_iou,
         "iou_border": t.iou["border"], "boundary_iou": t.boundary_iou}
        for a, t in test.items() if a in archs
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(TRANSFER_COLUMNS))


def transfer_runs(own: pd.DataFrame, experiments: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row per (source, network, encoder, starting weights): means over seeds and the count;
    None when no row has a backbone."""
    parts = [own.assign(**{"from": PIPELINE})]
    if experiments is not None:
        parts.append(experiments.assign(**{"from": EXPERIMENTS}))
    rows = pd.concat([p for p in parts if not p.empty] or [parts[0]], ignore_index=True)
    if rows.empty or (rows["encoder"] == "scratch").all():
        return None
    rows["pretrained"] = rows["pretrained"].astype(str).str.lower() == "true"
    rows["seconds_per_epoch"] = rows["train_seconds"].astype(float) / rows["epochs"].astype(float)
    numeric = [field for _, field, _, _ in SHOWN]
    grouped = rows.groupby(KEYS, sort=False)
    out = grouped[numeric].mean().join(grouped.size().rename("runs")).reset_index()
    return out


def weights_name(pretrained: bool, encoder: str) -> str:
    if encoder == "scratch":
        return "random (own encoder)"
    return "ImageNet" if pretrained else "random"


def transfer_table(runs: pd.DataFrame) -> Table:
    header = ["From", "Network", "Encoder", "Weights", "Runs", *(t for t, _, _, _ in SHOWN)]
    rows = [
        [r["from"], r["arch"], r["encoder"], weights_name(r["pretrained"], r["encoder"]),
         str(r["runs"]), *(format(r[field] / unit, fmt) for _, field, fmt, unit in SHOWN)]
        for _, r in runs.iterrows()
    ]  # fmt: skip
    return Table(header, rows, numeric_from=4)


def transfer_sentences(runs: pd.DataFrame) -> list[str]:
    """Per network and backbone: ImageNet against random starting weights, and each against the
    network's own encoder, where both were run (from the same source)."""
    out = []
    index = {tuple(r[k] for k in KEYS): r for _, r in runs.iterrows()}
    for (source, arch, encoder, pretrained), row in index.items():
        if encoder == "scratch":
            continue
        random_init = index.get((source, arch, encoder, False))
        own = index.get((source, arch, "scratch", False))
        label = f"{arch} on {encoder} ({source})"
        if pretrained and random_init is not None:
            out.append(f"{label}: ImageNet weights vs random ones: {_versus(row, random_init)}.")
        if own is not None:
            weights = weights_name(pretrained, encoder)
            out.append(f"{label}, {weights} weights vs its own encoder: {_versus(row, own)}.")
    if not runs["pretrained"].any():
        out.append(
            "No network here started from pretrained weights: these rows compare encoders "
            "trained from random initialisation (set models.<arch>.pretrained: true, or run "
            "make transfer, to add ImageNet-initialised ones)."
        )
    return out


def _versus(a: pd.Series, b: pd.Series) -> str:
    scores = ", ".join(
        f"{title} {a[field]:.4f} vs {b[field]:.4f} ({100 * (a[field] - b[field]):+.2f} points)"
        for title, field in (("mIoU", "miou"), ("binary pet IoU", "binary_pet_iou"))
    )
    return (
        f"{scores}; {a['params'] / 1e6:.2f} M vs {b['params'] / 1e6:.2f} M parameters, "
        f"{a['gflops_per_image']:.3f} vs {b['gflops_per_image']:.3f} GFLOPs per image, "
        f"{a['seconds_per_epoch']:.2f} vs {b['seconds_per_epoch']:.2f} s per epoch"
    )

"""Across seeds (``make compare``): each network's scores over training seeds, and verdicts on the
differences that weigh the seed spread against the resampling of the test images.

For a pair (a, b) and a metric, each seed s gives a difference d_s on the same test images and its
paired bootstrap interval. Two sources of uncertainty, combined as independent variances:

- the seed spread: the sample variance of the d_s over n seeds, divided by n (it shrinks with
  more seeds);
- the test images: the mean over seeds of the bootstrap variance of d_s (each interval's width /
  (2 x 1.96), squared). Every seed is scored on the same images, so more seeds do not shrink it.

A difference is claimed only when the mean difference is measurable, the combined 95% interval
(mean ± 1.96 x the combined standard error: a normal approximation, which with 2 or 3 seeds
understates the seed term) excludes 0, and every seed agrees in sign. Anything else is a tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from petseg.report.tables import Table
from petseg.results import COMPARED

Z = 1.96  # two-sided 95 % of a normal distribution
NO_DIFFERENCE = 0.005  # as in the discussion: half a point is no measurable difference
WORDS = {"miou": "mIoU", "iou.border": "border IoU", "boundary_iou": "Boundary IoU"}
# The questions the comparison answers, as (a, b): does a beat b?
QUESTIONS = (("unet", "unet_noskip", "skip connections"), ("unpool", "strided", "pooling indices"))


@dataclass(frozen=True)
class SeedVerdict:
    mean: float
    low: float
    high: float
    n: int
    agree: bool  # every seed's difference has the same sign

    @property
    def real(self) -> bool:
        return abs(self.mean) >= NO_DIFFERENCE and self.agree and not (self.low <= 0 <= self.high)


def combine(diffs: pd.DataFrame, a: str, b: str, metric: str) -> SeedVerdict | None:
    """The verdict on a - b in ``metric`` over the seeds in ``diffs`` (plots/seed_diffs.csv)."""
    forward = (diffs["a"] == a) & (diffs["b"] == b)
    backward = (diffs["a"] == b) & (diffs["b"] == a)
    rows = diffs[(diffs["metric"] == metric) & (forward | backward)]
    if rows.empty:
        return None
    flip = np.where(rows["a"] == a, 1.0, -1.0)
    d = rows["diff"].to_numpy(float) * flip
    finite = np.isfinite(d)
    d = d[finite]
    if not len(d):
        return None
    width = (rows["high"].to_numpy(float) - rows["low"].to_numpy(float))[finite]
    boot = np.nanmean((width / (2 * Z)) ** 2) if np.isfinite(width).any() else 0.0
    seed = np.var(d, ddof=1) / len(d) if len(d) > 1 else 0.0
    se = math.sqrt(seed + boot)
    mean = float(d.mean())
    agree = bool(np.all(np.sign(d) == np.sign(d[0])))  # all ties count as agreeing, not a win
    return SeedVerdict(mean, mean - Z * se, mean + Z * se, len(d), agree)


def seeds_table(seeds: pd.DataFrame) -> Table:
    """Mean ± sample std over seeds of each compared metric, per network."""
    rows = []
    for arch, g in seeds.groupby("arch", sort=False):
        cells = [str(arch)]
        for m in COMPARED:
            v = g[m].astype(float)
            cells.append(f"{v.mean():.4f}" + (f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else ""))
        rows.append([*cells, str(len(g))])
    return Table(["Architecture", *(f"{WORDS[m]} ↑" for m in COMPARED), "Seeds"], rows)


def _points(v: float) -> str:
    v = round(v * 100, 2) + 0.0
    return f"{v:+.2f}" if v else "0.00"


def seed_sentences(seeds: pd.DataFrame, diffs: pd.DataFrame) -> list[str]:
    """The answers to the comparison's questions across seeds, and what they rest on."""
    archs = set(seeds["arch"])
    n = seeds["seed"].nunique()
    out = [
        f"Across {n} training seeds ({', '.join(map(str, sorted(seeds['seed'].unique())))}): a "
        "difference is claimed only if every seed agrees in sign and its 95% interval, which "
        "combines the spread between seeds with the resampling of the test images, excludes 0."
    ]
    for a, b, what in QUESTIONS:
        if not {a, b} <= archs:
            continue
        parts, claims = [], []
        for m in COMPARED:
            v = combine(diffs, a, b, m)
            if v is None:
                continue
            claims.append(v.real and v.mean)
            parts.append(
                f"{WORDS[m]} {_points(v.mean)} points ({_points(v.low)} to {_points(v.high)}"
                f"{'' if v.agree else ', seeds disagree'})"
            )
        if not parts:
            continue
        real = [c for c in claims if c]
        verdict = (
            "matter" if real and all(c > 0 for c in real)
            else "hurt" if real and all(c < 0 for c in real)
            else "have mixed effects" if real else "make no difference these seeds can show"
        )  # fmt: skip
        out.append(f"Do {what} matter? Across seeds they {verdict}: {a} - {b}: {'; '.join(parts)}.")
    return out

"""Benchmark: petseg's preprocess vs a plain single-process PIL loop, on the real sample.

The plain loop is what a first version would do: open, convert to RGB (a full-size decode), resize
with BILINEAR, trimap with NEAREST, one file after the other. petseg decodes JPEGs at a reduced
scale (``Image.draft``) and spreads the work over processes. Both run here, interleaved, on the
same files, so the wall-clock ratio is meaningful on any machine (target: >= 2x with 2 idle cores).
CPU-ms per image (all processes) shows the work saved per image whatever the number of free cores;
the load average is printed because other processes on the machine lower the parallel gain.

Usage: python benchmarks/preprocess.py [--data ../shared/data/oxford-pets-sample] [--size 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from petseg.config import PreprocessParams
from petseg.data.oxford import image_path, read_list, trimap_path
from petseg.data.preprocess import preprocess

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/oxford-pets-sample"


def plain_loop(raw: Path, size: int) -> int:
    """The naive baseline; returns the number of pairs processed."""
    names = [
        e.name for f in ("trainval.txt", "test.txt") for e in read_list(raw / "annotations" / f)
    ]
    images = np.empty((len(names), size, size, 3), np.uint8)
    masks = np.empty((len(names), size, size), np.uint8)
    for i, name in enumerate(names):
        rgb = Image.open(image_path(raw, name)).convert("RGB")
        images[i] = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))
        trimap = Image.open(trimap_path(raw, name))
        masks[i] = np.asarray(trimap.resize((size, size), Image.Resampling.NEAREST))
    return len(names)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, images) for one call of ``fn``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    n = fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu, n


def project(raw: Path, size: int, workers: int = 0) -> int:
    """petseg's preprocess, writing to a temporary folder (default: one worker per core)."""
    with tempfile.TemporaryDirectory() as tmp:
        params = PreprocessParams(image_size=size, workers=workers)
        manifest = preprocess(raw, Path(tmp) / "prepared", params, progress=False)
    return sum(manifest["counts"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5, help="best of N interleaved runs")
    args = parser.parse_args()

    contenders = {
        "plain single-process loop": partial(plain_loop, args.data, args.size),
        "petseg preprocess, 1 worker": partial(project, args.data, args.size, 1),
        "petseg preprocess": partial(project, args.data, args.size),
    }
    plain_loop(args.data, args.size)  # warm the OS file cache for every contender
    # Interleaved, best of N: a burst of load from other processes hurts all alike.
    runs: dict[str, list[tuple[float, float, int]]] = {label: [] for label in contenders}
    for _ in range(args.repeat):
        for label, fn in contenders.items():
            runs[label].append(timed(fn))
    n = runs["plain single-process loop"][0][2]
    print(f"data: {args.data} ({n} pairs), size {args.size}px, best of {args.repeat}, ", end="")
    print(f"{len(os.sched_getaffinity(0))} CPU cores, load average {os.getloadavg()[0]:.1f}")
    best = {label: min(r[0] for r in rs) for label, rs in runs.items()}
    for label, rs in runs.items():
        cpu = min(r[1] for r in rs)
        print(f"{label:28s} {n / best[label]:7.1f} images/s   {1000 * cpu / n:5.2f} CPU-ms/image")
    speedup = best["plain single-process loop"] / best["petseg preprocess"]
    print(f"speed-up of petseg preprocess over the plain loop (wall clock): {speedup:.2f}x")


if __name__ == "__main__":
    main()

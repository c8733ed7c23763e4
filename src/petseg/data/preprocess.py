"""The ``preprocess`` stage: data/raw (official layout) -> data/prepared (uint8 arrays + manifest).

Why a prepared copy: decoding and resizing ~7,400 photos of up to 1,600 px costs more than a
training epoch at 128 px, so it is done once, in parallel, and training memory-maps the result
(format: :mod:`petseg.data.prepared`).

Steps: read ``trainval.txt`` and ``test.txt``; split trainval into train/val, seeded and stratified
by breed; decode and resize every pair in worker processes; record per-file problems as reasons
(one bad file never crashes the stage) but stop when more than ``max_bad_fraction`` of the listed
files are unusable; write arrays and ``manifest.json`` atomically (all or nothing).

The split is decided on the listed names before decoding, so a file that fails to decode never
moves another file between train and val.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import multiprocessing as mp
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from petseg import CLASSES
from petseg.config import PreprocessParams
from petseg.data.oxford import SkipFile, breed_of, load_pair, read_list
from petseg.data.prepared import MANIFEST, SPLITS, save_split
from petseg.errors import DataError
from petseg.fileio import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

_MAX_CHUNK = 32  # images per task: small enough for a smooth progress bar and load balance


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str  # short category, e.g. "missing trimap"
    detail: str


@dataclass(frozen=True)
class Info:
    original_hw: tuple[int, int]
    notes: list[str]


def preprocess(
    raw_dir: Path, out_dir: Path, params: PreprocessParams, progress: bool = True
) -> dict[str, Any]:
    """Prepare ``raw_dir`` into ``out_dir`` and return the manifest (also written as JSON)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    listed = _split_lists(raw_dir, params)
    names = [name for split in SPLITS for name in listed[split]]
    images, masks, info, skipped = _decode_all(raw_dir, names, params, progress)
    _check_bad_fraction(skipped, len(names), params.max_bad_fraction)

    manifest = _manifest(listed, info, skipped, params)
    index = {name: i for i, name in enumerate(names)}
    with atomic_dir(out_dir) as tmp:
        for split, entry in manifest["splits"].items():
            rows = _rows([index[name] for name in entry["names"]])
            entry["class_frequencies"] = _class_frequencies(masks[rows])
            save_split(tmp, split, images[rows], masks[rows])
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def split_trainval(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``names`` into (train, val), stratified by breed; both keep the order of ``names``.

    Per breed of n images, round(val_fraction * n) go to val, at least 1 when n >= 2 and never all
    of them. Each breed is shuffled by its own generator seeded from (seed, breed), so changing one
    breed's files does not reshuffle the others.
    """
    by_breed: dict[str, list[str]] = {}
    for name in names:
        by_breed.setdefault(breed_of(name), []).append(name)
    val: set[str] = set()
    for breed, members in by_breed.items():
        n = len(members)
        n_val = 0 if n < 2 else min(max(round(val_fraction * n), 1), n - 1)
        rng = np.random.default_rng([seed, zlib.crc32(breed.encode())])
        val.update(members[i] for i in rng.permutation(n)[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


def _split_lists(raw_dir: Path, params: PreprocessParams) -> dict[str, list[str]]:
    """Names per split, from the official lists; duplicates and empty splits are errors."""
    ann = raw_dir / "annotations"
    trainval = [e.name for e in read_list(ann / "trainval.txt")]
    test = [e.name for e in read_list(ann / "test.txt")]
    dupes = [n for n, c in Counter(trainval + test).items() if c > 1]
    if dupes:
        raise DataError(
            f"{ann}: {len(dupes)} names are listed twice in trainval.txt/test.txt, e.g. "
            f"{', '.join(dupes[:5])}: each image must belong to exactly one list"
        )
    train, val = split_trainval(trainval, params.val_fraction, params.seed)
    listed = {"train": train, "val": val, "test": test}
    for split, names in listed.items():
        if not names:
            hint = (
                "val needs a breed with >= 2 trainval images"
                if split == "val" and trainval
                else f"the list file in {ann} is empty"
            )
            raise DataError(f"split {split} would be empty: {hint}")
    return listed


def _workers(requested: int) -> int:
    """``preprocess.workers``, where 0 means one process per CPU core available to us."""
    if requested:
        return requested
    if hasattr(os, "sched_getaffinity"):  # honours CPU pinning (containers, taskset)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Output arrays of the running preprocess. Worker processes are forked after they are allocated
# in shared memory, so workers write decoded rows straight into them: nothing is pickled back but
# the small per-file records (this halves the overhead of the parallel path).
_OUT: tuple[np.ndarray, np.ndarray] | None = None


def _fork_available() -> bool:
    return "fork" in mp.get_all_start_methods()


def _alloc(shape: tuple[int, ...], shared: bool) -> np.ndarray:
    if not shared:
        return np.empty(shape, np.uint8)
    buf = mmap.mmap(-1, max(1, math.prod(shape)))  # anonymous, inherited by forked workers
    return np.frombuffer(buf, np.uint8).reshape(shape)


def _decode_all(
    raw_dir: Path, names: list[str], params: PreprocessParams, progress: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, Info], list[Skipped]]:
    """Decode every pair into preallocated arrays (row i = names[i]; skipped rows stay unset)."""
    global _OUT
    size, workers = params.image_size, _workers(params.workers)
    shared = workers > 1 and _fork_available()
    images = _alloc((len(names), size, size, 3), shared)
    masks = _alloc((len(names), size, size), shared)
    info: dict[str, Info] = {}
    skipped: list[Skipped] = []
    _OUT = (images, masks)
    try:
        for result in _decode(raw_dir, names, params, workers if shared else 1, progress):
            if isinstance(result, Skipped):
                log.warning("skipped %s: %s (%s)", result.name, result.reason, result.detail)
                skipped.append(result)
            else:
                info[result[0]] = result[1]
    finally:
        _OUT = None
    return images, masks, info, skipped


def _decode(
    raw_dir: Path, names: list[str], params: PreprocessParams, workers: int, progress: bool
) -> Iterator[tuple[str, Info] | Skipped]:
    """Yield one record per name, in order; in forked worker processes when ``workers`` > 1."""
    rows = list(enumerate(names))
    # Small chunks keep both cores busy to the end; only small records travel back.
    chunk = max(1, min(_MAX_CHUNK, math.ceil(len(rows) / (workers * 32))))
    chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    task = partial(
        _decode_chunk, raw_dir, size=params.image_size, on_wrong_format=params.on_wrong_format
    )
    pool = (
        ProcessPoolExecutor(min(workers, len(chunks)), mp_context=mp.get_context("fork"))
        if workers > 1
        else None
    )
    bar = tqdm(total=len(names), desc="preprocess", unit="img", disable=None if progress else True)
    with pool or contextlib.nullcontext(), bar:
        for results in (pool.map if pool else map)(task, chunks):
            bar.update(len(results))
            yield from results


def _decode_chunk(
    raw_dir: Path, rows: list[tuple[int, str]], size: int, on_wrong_format: str
) -> list[tuple[str, Info] | Skipped]:
    """Worker task: decode a few pairs into the shared output rows; problems become Skipped."""
    assert _OUT is not None, "_decode_chunk runs only inside _decode_all"
    images, masks = _OUT
    results: list[tuple[str, Info] | Skipped] = []
    for i, name in rows:
        try:
            pair = load_pair(raw_dir, name, size, on_wrong_format)
        except SkipFile as exc:
            results.append(Skipped(name, exc.reason, exc.detail))
            continue
        images[i], masks[i] = pair.image, pair.mask
        results.append((name, Info(pair.original_hw, pair.notes)))
    return results


def _rows(rows: list[int]) -> slice | list[int]:
    """Increasing row numbers as a slice when contiguous (no copy), else as an index list."""
    if rows and rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return rows


def _check_bad_fraction(skipped: list[Skipped], n_listed: int, max_fraction: float) -> None:
    if len(skipped) / n_listed <= max_fraction:
        return
    by_reason = Counter(s.reason for s in skipped).most_common()
    first = ", ".join(f"{s.name} ({s.reason})" for s in skipped[:5])
    raise DataError(
        f"{len(skipped)} of {n_listed} listed files ({len(skipped) / n_listed:.1%}) are unusable, "
        f"more than preprocess.max_bad_fraction = {max_fraction}: "
        f"{', '.join(f'{r} x{c}' for r, c in by_reason)}; first: {first}. Repair the raw data "
        f"(rerun the download stage) or raise preprocess.max_bad_fraction; nothing was written."
    )


def _manifest(
    listed: dict[str, list[str]],
    info: dict[str, Info],
    skipped: list[Skipped],
    params: PreprocessParams,
) -> dict[str, Any]:
    split_of = {name: split for split, names in listed.items() for name in names}
    splits = {}
    for split in SPLITS:
        kept = [name for name in listed[split] if name in info]
        if not kept:
            raise DataError(f"split {split} is empty: all {len(listed[split])} files were skipped")
        splits[split] = {
            "count": len(kept),
            "listed": len(listed[split]),
            "names": kept,
            "original_sizes": [list(info[name].original_hw) for name in kept],
            "breeds": dict(sorted(Counter(breed_of(name) for name in kept).items())),
        }
    notes = [
        {"name": name, "split": split_of[name], "note": note}
        for name in split_of
        if name in info
        for note in info[name].notes
    ]
    for n in notes:
        log.info("note on %s: %s", n["name"], n["note"])
    return {
        "image_size": params.image_size,
        "classes": list(CLASSES),
        "counts": {split: splits[split]["count"] for split in SPLITS},
        "splits": splits,
        "skipped": [
            {"name": s.name, "split": split_of[s.name], "reason": s.reason, "detail": s.detail}
            for s in skipped
        ],
        "notes": notes,
        "params": params.model_dump(),
    }


def _class_frequencies(masks: np.ndarray) -> dict[str, float]:
    """Fraction of pixels per label at the prepared size (for class weights and the report)."""
    counts = np.bincount(masks.ravel(), minlength=len(CLASSES))
    return {c: round(float(n) / masks.size, 6) for c, n in zip(CLASSES, counts, strict=True)}

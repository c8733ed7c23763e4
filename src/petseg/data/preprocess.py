"""The ``preprocess`` stage: data/raw (official layout) -> data/prepared (uint8 arrays + manifest).

Why a prepared copy: decoding and resizing ~7,400 photos of up to 1,600 px costs more than a
training epoch at 128 px, so it is done once, in parallel, and training memory-maps the result
(format: :mod:`petseg.data.prepared`).

Steps: read ``trainval.txt`` and ``test.txt``; split trainval into train/val, seeded and stratified
by breed; decode and resize every pair in worker processes, each row written straight into its
split's ``.npy`` file; record per-file problems as reasons (one bad file never crashes the stage)
but stop when more than ``max_bad_fraction`` of the listed files are unusable; drop the rows of
skipped files and write ``manifest.json``, all in a temporary folder that replaces the output only
when everything succeeded (all or nothing).

The split is decided on the listed names before decoding, so a file that fails to decode never
moves another file between train and val.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from petseg import CLASSES
from petseg.config import PreprocessParams
from petseg.data.oxford import SkipFile, breed_of, load_pair, read_list
from petseg.data.prepared import MANIFEST, SPLITS, create_split, shrink_split
from petseg.data.split import split_trainval
from petseg.errors import DataError
from petseg.fileio import atomic_dir, atomic_write_json, sweep_temporaries

log = logging.getLogger(__name__)

_MAX_CHUNK = 32  # images per task: small enough for a smooth progress bar and load balance
_PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str  # short category, e.g. "missing trimap"
    detail: str
    row: int = -1


@dataclass(frozen=True)
class Info:
    original_hw: tuple[int, int]
    notes: list[str]
    row: int = -1
    label_counts: tuple[int, ...] = ()  # pixels per label at the prepared size


def preprocess(
    raw_dir: Path, out_dir: Path, params: PreprocessParams, progress: bool = True
) -> dict[str, Any]:
    """Prepare ``raw_dir`` into ``out_dir`` and return the manifest (also written as JSON)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    sweep_temporaries(out_dir)  # a killed run's half-written arrays: their room is needed now
    listed = _split_lists(raw_dir, params)
    names = [name for split in SPLITS for name in listed[split]]
    with atomic_dir(out_dir) as tmp:
        # The workers write each decoded row straight into its split's .npy file.
        outputs = [create_split(tmp, s, len(listed[s]), params.image_size) for s in SPLITS]
        info, skipped = _decode_all(raw_dir, names, outputs, params, progress)
        _check_bad_fraction(skipped, len(names), params.max_bad_fraction)
        manifest = _manifest(listed, info, skipped, params)
        del outputs  # unmapped before a file is rewritten
        for split, entry in manifest["splits"].items():
            if entry["count"] < entry["listed"]:  # a skipped file left its row unset: drop it
                position = {name: i for i, name in enumerate(listed[split])}
                shrink_split(tmp, split, [position[name] for name in entry["names"]])
            counts = np.sum([info[name].label_counts for name in entry["names"]], axis=0)
            entry["class_frequencies"] = _class_frequencies(counts)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


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
            list_file = ann / ("test.txt" if split == "test" else "trainval.txt")
            hint = (
                "val needs a breed with >= 2 trainval images"
                if split == "val" and trainval
                else f"{list_file} lists no image"
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


# Output arrays of the running preprocess: per split, the (images, masks) memory maps of its .npy
# files, and the global row at which each split starts. Worker processes are forked after they are
# mapped (shared, file-backed), so they write decoded rows straight into the files: nothing is
# pickled back but the small per-file records, and nothing is copied or saved afterwards.
_OUT: tuple[list[tuple[np.ndarray, np.ndarray]], list[int]] | None = None


def _fork_available() -> bool:
    return "fork" in mp.get_all_start_methods()


def _decode_all(
    raw_dir: Path,
    names: list[str],
    outputs: list[tuple[np.ndarray, np.ndarray]],
    params: PreprocessParams,
    progress: bool,
) -> tuple[dict[str, Info], list[Skipped]]:
    """Decode every pair into ``outputs`` (global row i = names[i], split after split, each
    split's rows in its arrays; rows of skipped files stay unset)."""
    global _OUT
    workers = min(_workers(params.workers), max(1, len(names)))
    parallel = workers > 1 and _fork_available()
    starts = [0]
    for images, _ in outputs:
        starts.append(starts[-1] + len(images))
    info: dict[str, Info] = {}
    skipped: list[Skipped] = []
    task = partial(
        _decode_rows, raw_dir, size=params.image_size, on_wrong_format=params.on_wrong_format
    )
    bar = tqdm(total=len(names), desc="preprocess", unit="img", disable=None if progress else True)
    _OUT = (outputs, starts)
    try:
        with bar:
            rows = list(enumerate(names))
            results = (
                _run_parallel(task, rows, workers, bar)
                if parallel
                else _run_inline(task, rows, bar)
            )
    finally:
        _OUT = None
    for result in results:
        if isinstance(result, Skipped):
            log.warning("skipped %s: %s (%s)", result.name, result.reason, result.detail)
            skipped.append(result)
        else:
            info[result[0]] = result[1]
    return info, skipped


_Record = tuple[str, "Info"] | Skipped
_Task = Callable[[list[tuple[int, str]]], list[_Record]]


def _run_inline(task: _Task, rows: list[tuple[int, str]], bar: tqdm) -> list[_Record]:
    results: list[_Record] = []
    for i in range(0, len(rows), _MAX_CHUNK):
        results += task(rows[i : i + _MAX_CHUNK])
        bar.update(len(rows[i : i + _MAX_CHUNK]))
    return results


def _run_parallel(
    task: _Task, rows: list[tuple[int, str]], workers: int, bar: tqdm
) -> list[_Record]:
    """Run ``task`` over ``rows`` in this process and ``workers - 1`` forked ones.

    Chunks are handed out through a shared counter (dynamic balance, no per-task messages), and
    this process decodes too instead of waiting: on a 2-core machine a process pool's dispatch and
    idle parent cost about a tenth of the run. Each child sends its records once, at the end.
    Records come back in row order.
    """
    ctx = mp.get_context("fork")
    # Small chunks keep every process busy to the end (photos differ in size).
    chunk = max(1, min(_MAX_CHUNK, len(rows) // (workers * 16)))
    next_row = ctx.Value("q", 0)  # index into rows of the next chunk to take
    finished = ctx.Value("q", 0, lock=False)  # rows decoded by the children, for the bar

    def chunks() -> Iterator[list[tuple[int, str]]]:
        while True:
            with next_row.get_lock():
                start = next_row.value
                next_row.value = start + chunk
            if start >= len(rows):
                return
            yield rows[start : start + chunk]

    parent = os.getpid()

    def child(conn: Connection, inherited: list[Connection]) -> None:
        _bind_to_parent(parent, inherited)
        try:
            out: list[_Record] = []
            for part in chunks():
                if os.getppid() != parent:  # the stage is gone: nobody will read the records
                    return
                out += task(part)
                with next_row.get_lock():
                    finished.value += len(part)
            conn.send(("ok", out))
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises
            with contextlib.suppress(OSError):
                conn.send(("error", traceback.format_exc()))
        finally:
            conn.close()

    procs: list[tuple[mp.process.BaseProcess, Connection]] = []
    failed = True
    try:
        for _ in range(workers - 1):
            recv, send = ctx.Pipe(duplex=False)
            # The child must not hold read ends: its own would keep its writes from ever failing.
            inherited = [recv, *(r for _, r in procs)]
            proc = ctx.Process(target=child, args=(send, inherited), daemon=True)
            proc.start()
            send.close()
            procs.append((proc, recv))
        results = _own_share_then_collect(task, chunks, procs, finished, bar)
        failed = False
    finally:
        _end_workers(procs, failed)
    bar.update(len(rows) - bar.n)
    return sorted(results, key=_row_of)


def _end_workers(procs: list[tuple[mp.process.BaseProcess, Connection]], failed: bool) -> None:
    """Join the workers; after a failure (or a stop) kill them first: they would go on decoding
    for nobody."""
    for proc, recv in procs:
        recv.close()
        if failed:
            proc.kill()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _own_share_then_collect(
    task: _Task,
    chunks: Callable[[], Iterator[list[tuple[int, str]]]],
    procs: list[tuple[mp.process.BaseProcess, Connection]],
    finished: Any,
    bar: tqdm,
) -> list[_Record]:
    """Decode chunks in this process until none is left, then gather the children's records."""
    results: list[_Record] = []
    own = 0
    for part in chunks():
        results += task(part)
        own += len(part)
        bar.update(own + finished.value - bar.n)
    for proc, recv in procs:
        try:
            status, payload = recv.recv()
        except EOFError:
            proc.join()
            raise DataError(
                f"a preprocess worker process died (exit code {proc.exitcode}); "
                "rerun with preprocess.workers: 1 to see the failing file"
            ) from None
        if status != "ok":
            raise RuntimeError(f"a preprocess worker process failed:\n{payload}")
        results += payload
        bar.update(own + finished.value - bar.n)
    return results


def _bind_to_parent(parent: int, inherited: list[Connection]) -> None:
    """In a forked worker: close the read ends it inherited and tie its life to the stage's.

    Stop signals are the parent's to handle (Ctrl-C reaches the whole process group, and the
    parent then ends its workers); on Linux the kernel kills the worker when the parent dies, even
    by SIGKILL, elsewhere it stops before its next chunk.
    """
    for conn in inherited:
        conn.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):  # prctl is Linux only
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)


def _row_of(record: _Record) -> int:
    return record.row if isinstance(record, Skipped) else record[1].row


def _decode_rows(
    raw_dir: Path, rows: list[tuple[int, str]], size: int, on_wrong_format: str
) -> list[_Record]:
    """Decode a few pairs into the shared output rows; problems become Skipped records."""
    assert _OUT is not None, "_decode_rows runs only inside _decode_all"
    outputs, starts = _OUT
    results: list[_Record] = []
    for i, name in rows:
        try:
            pair = load_pair(raw_dir, name, size, on_wrong_format)
        except SkipFile as exc:
            results.append(Skipped(name, exc.reason, exc.detail, row=i))
            continue
        k = bisect.bisect_right(starts, i) - 1  # the split holding global row i
        images, masks = outputs[k]
        images[i - starts[k]], masks[i - starts[k]] = pair.image, pair.mask
        counts = np.bincount(pair.mask.ravel(), minlength=len(CLASSES))
        results.append((name, Info(pair.original_hw, pair.notes, i, tuple(counts.tolist()))))
    return results


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


def _class_frequencies(counts: np.ndarray) -> dict[str, float]:
    """Fraction of pixels per label at the prepared size (for class weights and the report)."""
    total = max(int(np.sum(counts)), 1)
    return {c: round(float(n) / total, 6) for c, n in zip(CLASSES, counts, strict=True)}

"""The prepared array format written by ``preprocess`` and read by training and evaluation.

``data/prepared/`` holds, per split ``s`` in :data:`SPLITS`:

- ``{s}_images.npy``: uint8, shape (N, S, S, 3), RGB, S = ``preprocess.image_size``;
- ``{s}_masks.npy``: uint8, shape (N, S, S), labels 0 pet / 1 background / 2 border;

and ``manifest.json`` with, per split, the image names (same order as the arrays), their original
(height, width), breeds, class pixel frequencies, and the list of skipped files with reasons.

Plain ``.npy`` files are memory-mappable, so a loader can feed batches without holding the whole
set in RAM twice, and any tool (numpy, torch.from_numpy) reads them without petseg. Training reads
them row by row instead (:class:`RowReader`), so its resident memory does not grow with the data.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petseg.errors import DataError
from petseg.fileio import preallocate

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


class RowReader:
    """The rows of a C-order ``.npy`` file, read on demand with ``pread``: ``reader[idx]``.

    Neither loaded nor memory-mapped: a training epoch touches every row once in random order, and
    holding (or mapping) the arrays would put the whole split into the process's resident memory
    (about 0.24 GiB for the real train+val splits at 128 px, more at larger sizes), while reading
    a batch's rows from the OS page cache costs a fraction of a millisecond. Indexing with a
    torch tensor returns a tensor (what :class:`petseg.engine.Feed` uses), anything else a numpy
    array. Safe to use after ``fork`` (``pread`` has no shared file position).
    """

    def __init__(self, path: str | Path) -> None:
        self._fd = -1
        self.path = Path(path)
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if fortran or not shape or dtype.hasobject:
            raise DataError(f"{self.path}: not a C-order numeric array: rerun preprocess")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.shape[0] * self.row_bytes
        if self.path.stat().st_size < expected:
            raise DataError(f"{self.path} is truncated: rerun preprocess")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        # torch is not imported here: the preprocess stage never needs it (importing it costs a
        # second and half a GB that every forked worker would share); an index can only be a
        # tensor if the caller has imported torch already.
        torch = sys.modules.get("torch")
        as_tensor = torch is not None and isinstance(index, torch.Tensor)
        if not isinstance(index, slice):
            index = np.asarray(index)
        rows = np.arange(len(self))[index]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        buf = out.reshape(len(rows), -1).view(np.uint8)
        for i, row in enumerate(rows.tolist()):
            if os.preadv(self._fd, [buf[i]], self.offset + row * self.row_bytes) != self.row_bytes:
                raise DataError(f"{self.path}: short read at row {row}: rerun preprocess")
        return torch.from_numpy(out) if as_tensor else out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class PreparedSplit:
    images: np.ndarray | RowReader  # (N, S, S, 3) uint8
    masks: np.ndarray | RowReader  # (N, S, S) uint8
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / f"{split}_images.npy", root / f"{split}_masks.npy"


def create_split(root: str | Path, split: str, n: int, size: int) -> tuple[np.memmap, np.memmap]:
    """Create a split's two ``.npy`` files for ``n`` rows at ``size`` px, returned as writable
    memory maps (shared with forked processes: preprocess workers write their rows straight into
    the files, so nothing is copied or saved afterwards)."""
    img_path, mask_path = split_paths(root, split)
    return _writable(img_path, (n, size, size, 3)), _writable(mask_path, (n, size, size))


def _writable(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 ``.npy`` file of ``shape``, its blocks reserved, as a writable memory map.

    The file is created sparse; a write into a page the disk has no room for would kill the
    writer with SIGBUS, so the whole size is allocated first: a full disk is an OSError here.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    preallocate(path)
    return array


def shrink_split(root: str | Path, split: str, keep: list[int], chunk: int = 256) -> None:
    """Rewrite a split made by :func:`create_split` with only its rows ``keep`` (in that order),
    ``chunk`` rows at a time through the page cache (not the whole split in memory)."""
    for path in split_paths(root, split):
        src = np.load(path, mmap_mode="r")
        tmp = path.with_name(f".{path.name}.shrink")
        dst = _writable(tmp, (len(keep), *src.shape[1:]))
        for i in range(0, len(keep), chunk):
            dst[i : i + chunk] = src[keep[i : i + chunk]]
        dst.flush()
        del src, dst
        os.replace(tmp, path)


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the preprocess stage first (dvc repro preprocess)"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): rerun preprocess") from None


def load_split(
    root: str | Path, split: str, mmap: bool = True, stream: bool = False
) -> PreparedSplit:
    """Load one split; with ``mmap`` the arrays are memory-mapped read-only, with ``stream`` they
    are :class:`RowReader` objects that read rows on demand (overrides ``mmap``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    manifest = read_manifest(root)
    names = manifest["splits"][split]["names"]
    img_path, mask_path = split_paths(root, split)
    try:
        if stream:
            images, masks = RowReader(img_path), RowReader(mask_path)
        else:
            images = np.load(img_path, mmap_mode="r" if mmap else None)
            masks = np.load(mask_path, mmap_mode="r" if mmap else None)
    except FileNotFoundError as exc:
        raise DataError(
            f"{exc.filename} not found: rerun preprocess (dvc repro preprocess)"
        ) from None
    if len(images) != len(names) or len(masks) != len(names):
        raise DataError(
            f"{root}: {split} arrays hold {len(images)} images / {len(masks)} masks but the "
            f"manifest lists {len(names)} names: rerun preprocess"
        )
    return PreparedSplit(images=images, masks=masks, names=list(names))

"""The seeded, breed-stratified split, shared by preprocess (train/val) and the COCO source (test).

A module of its own so that the download stage, which splits COCO data into trainval/test, depends
on this function alone and not on the whole preprocess stage.
"""

from __future__ import annotations

import zlib

import numpy as np

from petseg.data.oxford import breed_of


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

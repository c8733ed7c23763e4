"""The prediction grids: one PNG per chosen test image, input | truth | each network, with each
network's error map below and a header that names the row and every column (DVC shows
``plots/predictions`` as images on their own; the report embeds them).

File names depend only on the kind and rank of a row (``fixed_01.png``, ``hardest_01.png``), never
on a score, so ``dvc plots diff`` puts the same file of two revisions side by side. Which test
image each file shows is listed in ``plots/eval/examples.csv`` (:func:`example_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from petseg import ERROR_COLOUR
from petseg import PALETTE as CLASS_COLOURS
from petseg.data.prepared import PreparedSplit
from petseg.fileio import atomic_dir

PALETTE = np.array(CLASS_COLOURS, dtype=np.uint8)
SEP = 2  # white pixels between tiles, before upscaling
FONT_PX = 13  # header text size; smaller where a label would not fit its tile
MIN_FONT_PX = 7
INK = (30, 30, 30)
WHY = {"fixed": "evenly spaced test images", "hardest": "lowest mean mIoU"}


@dataclass(frozen=True)
class Example:
    """One grid row: ``kind`` ``fixed`` (evenly spaced over the test split, the same images in
    every run) or ``hardest`` (lowest mean per-image mIoU over the networks of this run)."""

    kind: str
    rank: int  # 1-based within its kind
    index: int  # row of the test split

    @property
    def file(self) -> str:
        return f"{self.kind}_{self.rank:02d}.png"


def choose_examples(per_image: Mapping[str, np.ndarray], n: int) -> list[Example]:
    """``n - n // 2`` fixed test images, evenly spaced by index (independent of any score), then
    the ``n // 2`` hardest by mIoU averaged over the networks (an image may be both)."""
    total = len(next(iter(per_image.values())))
    n = min(n, total)
    fixed = sorted({int(round(i)) for i in np.linspace(0, total - 1, n - n // 2)})
    mean = np.mean(np.stack(list(per_image.values())), axis=0)
    # Stable sort: ties keep test order; images without labelled pixels (NaN) sort last.
    hardest = [int(i) for i in np.argsort(mean, kind="stable")[: n // 2]]
    return [Example("fixed", k, i) for k, i in enumerate(fixed, 1)] + [
        Example("hardest", k, i) for k, i in enumerate(hardest, 1)
    ]


def example_rows(examples: Sequence[Example], names: Sequence[str]) -> list[dict]:
    """``plots/eval/examples.csv``: which test image each grid file shows."""
    return [
        {"file": ex.file, "kind": ex.kind, "rank": ex.rank, "image": names[ex.index]}
        for ex in examples
    ]


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The input dimmed to grey, every pixel whose predicted label is wrong in red."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat((40 + 0.45 * grey).astype(np.uint8)[..., None], 3, axis=2)
    out[pred != truth] = ERROR_COLOUR
    return out


def grid_row(
    image: np.ndarray, truth: np.ndarray, preds: list[np.ndarray], scale: int
) -> Image.Image:
    """Two lines: input | ground truth | one prediction per architecture, side by side, and
    under each prediction its error map (:func:`error_map`); white under input and truth."""
    h, w, _ = image.shape
    blank = np.full_like(image, 255)
    top = [image, PALETTE[truth]] + [PALETTE[p] for p in preds]
    bottom = [blank, blank] + [error_map(image, truth, p) for p in preds]
    sep = np.full((h, SEP, 3), 255, dtype=np.uint8)

    def line(tiles: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([t for tile in tiles for t in (tile, sep)][:-1], axis=1)

    upper = line(top)
    gap = np.full((SEP, upper.shape[1], 3), 255, dtype=np.uint8)
    pil = Image.fromarray(np.concatenate([upper, gap, line(bottom)], axis=0))
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)


def _font(text: str, width: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font (the same pixels on every machine), shrunk until ``text`` fits."""
    size = FONT_PX
    font = ImageFont.load_default(size=size)
    while size > MIN_FONT_PX and font.getlength(text) > width:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    font = _font(text, width)
    while len(text) > 1 and font.getlength(text) > width:  # still too long at the smallest size
        text = text[:-2] + "…"
    draw.text(xy, text, fill=INK, font=font)


def labelled(
    row: Image.Image, title: str, columns: Sequence[tuple[str, str]], tile: int
) -> Image.Image:
    """``row`` (:func:`grid_row`, tiles ``tile`` px wide) under a header: ``title`` on the first
    line, then each column's (name, detail) over its tile; "errors in red" in the blank corner
    under input and truth, so the PNG reads without the report."""
    line = FONT_PX + 5
    step = (row.width - tile) // (len(columns) - 1)  # tile plus separator (input and truth: >= 2)
    out = Image.new("RGB", (row.width, row.height + 3 * line + 4), (255, 255, 255))
    out.paste(row, (0, 3 * line + 4))
    draw = ImageDraw.Draw(out)
    _text(draw, (2, 1), title, row.width - 4)
    for k, (name, detail) in enumerate(columns):
        _text(draw, (k * step + 2, line + 2), name, tile - 4)
        _text(draw, (k * step + 2, 2 * line + 2), detail, tile - 4)
    bottom = 3 * line + 4 + row.height // 2
    _text(draw, (2, bottom + 2), "error maps:", 2 * tile - 4)
    _text(draw, (2, bottom + line + 2), "wrong pixels in red", 2 * tile - 4)
    return out


def write_grids(
    out: Path,
    test: PreparedSplit,
    preds: Mapping[str, np.ndarray],
    per_image: Mapping[str, np.ndarray],
    examples: Sequence[Example],
    scale: int,
) -> None:
    """``out``/<kind>_<rank>.png for each of ``examples``, headed by the row's kind, rank and
    image name and by each column's name and per-image mIoU."""
    counts = {kind: sum(ex.kind == kind for ex in examples) for kind in ("fixed", "hardest")}
    with atomic_dir(out) as tmp:
        for ex in examples:
            i = ex.index
            row = grid_row(test.images[i], test.masks[i], [p[i] for p in preds.values()], scale)
            title = f"{ex.kind} {ex.rank} of {counts[ex.kind]} ({WHY[ex.kind]}): {test.names[i]}"
            columns = [("input", ""), ("ground truth", "")] + [
                (arch, f"mIoU {_score(per_image[arch][i])}") for arch in preds
            ]
            grid = labelled(row, title, columns, test.images.shape[2] * scale)
            grid.save(tmp / ex.file, optimize=True)


def _score(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "n/a"

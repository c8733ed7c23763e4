"""The official Oxford-IIIT Pet layout: list files, trimap labels, robust image decoding.

Every data source (official archives, synthetic, folder) writes this layout, so this module is the
only place that knows it::

    images/NAME.jpg                    RGB photo (a few are not really JPEGs, see below)
    annotations/trimaps/NAME.png       1 pet, 2 background, 3 border (same size as the photo)
    annotations/{list,trainval,test}.txt   lines "NAME CLASS-ID SPECIES BREED-ID"

Real files break naive loaders: ``Abyssinian_34.jpg`` is a GIF and ``Abyssinian_5.jpg`` an RGBA
PNG. Images are therefore decoded by content, never by extension; such files are converted to RGB
or skipped (``preprocess.on_wrong_format``) and always reported in a note. Per-file problems raise
:class:`SkipFile` with a short reason, so the caller can record them instead of crashing.

Speed: the target size is much smaller than most photos, so JPEGs are decoded at a reduced scale
(``Image.draft``: 1/2, 1/4 or 1/8, never below the target size), which saves decoding work and
most of the resize, and then resized with BILINEAR (antialiased when shrinking). Trimaps are
resized with NEAREST so that labels are never blended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image

from petseg.errors import DataError

_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with an extra preview frame, still a JPEG
_TRAILING_NUMBER = re.compile(r"_\d+$")

# Trimap value -> label; 255 marks values that are not allowed (anything but 1, 2, 3).
_INVALID = 255
_TRIMAP_LUT = np.full(256, _INVALID, dtype=np.uint8)
_TRIMAP_LUT[[1, 2, 3]] = [0, 1, 2]

# What PIL raises for a file it cannot decode (truncated, corrupt, not an image, too large).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class SkipFile(Exception):  # noqa: N818 - a signal for the caller, not a failure of the program
    """A listed file cannot be used; ``reason`` is a short category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file: ``NAME CLASS-ID SPECIES BREED-ID`` (species 1 cat, 2 dog)."""

    name: str
    class_id: int
    species: int
    breed_id: int

    @property
    def breed(self) -> str:
        return breed_of(self.name)


@dataclass
class Pair:
    """A decoded image and its label mask at the prepared size."""

    name: str
    image: np.ndarray  # (S, S, 3) uint8 RGB
    mask: np.ndarray  # (S, S) uint8 labels
    original_hw: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def breed_of(name: str) -> str:
    """``american_bulldog_12`` -> ``american_bulldog`` (the name without its trailing number)."""
    return _TRAILING_NUMBER.sub("", name)


def image_path(root: Path, name: str) -> Path:
    return Path(root) / "images" / f"{name}.jpg"


def trimap_path(root: Path, name: str) -> Path:
    return Path(root) / "annotations" / "trimaps" / f"{name}.png"


def _short(path: Path) -> str:
    """``images/NAME.jpg``: enough to find the file, and the manifest stays machine-independent."""
    return f"{path.parent.name}/{path.name}"


def read_list(path: Path) -> list[ListEntry]:
    """Parse a list file; ``#`` and blank lines are ignored, a malformed line is an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        msg = "expected the Oxford-IIIT Pet layout (run the download stage first)"
        raise DataError(f"{path} not found: {msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise DataError(
            f"{path}: cannot read the list file ({reason}); expected lines "
            "'NAME CLASS-ID SPECIES BREED-ID' (rerun the download stage)"
        ) from None
    entries = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        entries.append(_parse_line(line, path, lineno))
    return entries


def _parse_line(line: str, path: Path, lineno: int) -> ListEntry:
    parts = line.split()
    try:
        if len(parts) != 4:
            raise ValueError
        name, class_id, species, breed_id = parts[0], *map(int, parts[1:])
    except ValueError:
        raise DataError(
            f"{path}:{lineno}: expected 'NAME CLASS-ID SPECIES BREED-ID', got {line!r}"
        ) from None
    return ListEntry(name, class_id, species, breed_id)


def trimap_to_labels(trimap: np.ndarray) -> np.ndarray:
    """Map an Oxford trimap to training labels: 1 -> 0 pet, 2 -> 1 background, 3 -> 2 border.

    Order follows :data:`petseg.CLASSES`. Any other value raises ``ValueError`` naming the values;
    the caller decides whether that skips the file. Returns a new uint8 array of the same shape.
    """
    trimap = np.asarray(trimap)
    if not np.issubdtype(trimap.dtype, np.integer):
        raise ValueError(f"trimap must hold integers, got dtype {trimap.dtype}")
    if trimap.size and (trimap.min() < 0 or trimap.max() > 255):
        raise ValueError(f"trimap values outside 1..3: range {trimap.min()}..{trimap.max()}")
    labels = _TRIMAP_LUT[trimap.astype(np.uint8, copy=False)]
    if (labels == _INVALID).any():
        bad = np.unique(trimap[labels == _INVALID])
        raise ValueError(f"trimap values outside 1..3: {bad[:10].tolist()}")
    return labels


def load_pair(
    root: Path, name: str, size: int, on_wrong_format: Literal["convert", "skip"]
) -> Pair:
    """Decode ``name``'s image and trimap and resize both to ``size`` x ``size``.

    The aspect ratio is not kept (photos are squashed, like the masks), so every pixel of the
    original is represented. Raises :class:`SkipFile` for any per-file problem.
    """
    image, original_hw, notes = load_image(image_path(root, name), size, on_wrong_format)
    mask, has_pet = load_mask(trimap_path(root, name), original_hw, size)
    if not has_pet:
        notes.append("trimap has no pet pixels")
    return Pair(name, image, mask, original_hw, notes)


def load_image(
    path: Path, size: int, on_wrong_format: Literal["convert", "skip"]
) -> tuple[np.ndarray, tuple[int, int], list[str]]:
    """Return (RGB uint8 array at ``size``, original (h, w), notes) for the image at ``path``."""
    if not path.is_file():
        raise SkipFile("missing image", _short(path))
    return decode_rgb(path, (size, size), on_wrong_format)


def decode_rgb(
    source: Path | BinaryIO,
    size: tuple[int, int] | None,
    on_wrong_format: Literal["convert", "skip"] = "convert",
) -> tuple[np.ndarray, tuple[int, int], list[str]]:
    """Decode ``source`` (a path or an open binary file) by content: (RGB uint8 array at ``size``
    = (height, width), or at its own size for None; original (h, w); notes).

    The one decoder of petseg: preprocess and predict read images through it, so a network sees
    at prediction time exactly the pixels it was trained and evaluated on. Raises
    :class:`SkipFile` for a file that cannot be decoded (or must be skipped)."""
    name = source.name if isinstance(source, Path) else getattr(source, "name", "image")
    try:
        with Image.open(source) as im:
            w, h = im.size  # before draft(), which shrinks the reported size
            notes = _format_notes(im, on_wrong_format)
            draft = im.draft("RGB", size[::-1]) if size else None
            im.load()  # decode now: a truncated JPEG only fails here
            rgb = _to_rgb(im)
            if size and size != (h, w):
                box = draft[1] if draft else None
                rgb = rgb.resize(size[::-1], Image.Resampling.BILINEAR, box=box)
            return np.asarray(rgb), (h, w), notes
    except Image.UnidentifiedImageError:  # its message is PIL's repr of the file object
        detail = "not an image: no decoder recognises its content"
        raise SkipFile("unreadable image", f"{Path(str(name)).name}: {detail}") from None
    except _DECODE_ERRORS as exc:
        raise SkipFile("unreadable image", f"{Path(str(name)).name}: {exc}") from None


def _format_notes(im: Image.Image, on_wrong_format: str) -> list[str]:
    """Notes on a file that is not a plain RGB JPEG; raises SkipFile when it must be skipped."""
    if im.format not in _JPEG_FORMATS:
        what = f"file is {im.format} ({im.mode}), not JPEG"
        if on_wrong_format == "skip":
            raise SkipFile("wrong format", f"{what} (preprocess.on_wrong_format = skip)")
        return [f"decoded as {im.format} ({im.mode}), converted to RGB"]
    if im.mode != "RGB":
        return [f"JPEG in mode {im.mode}, converted to RGB"]
    return []


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels are composited on black.

    Black is a neutral, deterministic fill. The one real RGBA file (Abyssinian_5) is fully opaque,
    so for it this equals dropping the alpha channel.
    """
    if im.mode == "RGB":
        return im
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def load_mask(path: Path, image_hw: tuple[int, int], size: int) -> tuple[np.ndarray, bool]:
    """Return (labels at ``size`` x ``size``, whether the trimap has pet pixels).

    Every value of the full-size trimap is checked (through its histogram, which is much cheaper
    than mapping every pixel), so a stray value is caught even where NEAREST would drop it.
    """
    if not path.is_file():
        raise SkipFile("missing trimap", _short(path))
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):  # P: the palette indices are the trimap values
                raise SkipFile("bad trimap values", f"{path.name}: mode {im.mode}, expected L")
            trimap_hw = im.size[::-1]
            present = np.flatnonzero(im.histogram())
            resized = im.resize((size, size), Image.Resampling.NEAREST)
    except _DECODE_ERRORS as exc:
        raise SkipFile("unreadable trimap", f"{path.name}: {exc}") from None
    if trimap_hw != image_hw:
        (h, w), (th, tw) = image_hw, trimap_hw
        raise SkipFile("size mismatch", f"image {w}x{h}, trimap {tw}x{th} (width x height)")
    try:
        present_labels = trimap_to_labels(present)
    except ValueError as exc:
        raise SkipFile("bad trimap values", f"{path.name}: {exc}") from None
    return trimap_to_labels(np.asarray(resized)), bool((present_labels == 0).any())

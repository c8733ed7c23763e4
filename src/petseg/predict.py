"""Segment your own photos with a trained network (``python -m petseg.predict``).

    python -m petseg.predict --model models/unet.pt photo.jpg photos/ "shots/*.png" --out preds

Inputs are files, folders (their image files) or globs; every image is decoded by content with
the decoder preprocess uses, so a GIF or an RGBA PNG named ``.jpg`` works. For each input NAME it
writes, at the photo's own size:

``OUT/trimaps/NAME.png``    the official trimap convention (1 pet, 2 background, 3 border), so a
                            prediction can serve as an annotation
``OUT/overlays/NAME.jpg``   the photo with each class tinted in its report colour

and with ``--coco`` the COCO results (``coco_results.json``, one pycocotools RLE per image and
class, category id = trimap value) with the images and categories they refer to
(``coco_images.json``); with ``--areas`` the pixels and share of each class per image
(``areas.csv``). Every file is written atomically. An input that cannot be read costs one line on
stderr naming it and the fix; the others are still written, and the exit code is then 2.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from petseg import CLASSES, PALETTE, cli
from petseg.data import coco
from petseg.data.oxford import SkipFile, decode_rgb
from petseg.errors import ParamsError
from petseg.fileio import atomic_write_bytes, atomic_write_json
from petseg.segmenter import Segmenter, net_size, resize_rgb

log = logging.getLogger("petseg.predict")

# What a folder contributes (an explicitly named file is tried whatever its suffix).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.45  # enough colour to read the classes, enough photo to judge the edges
COLOURS = np.array(PALETTE, dtype=np.float32)


@dataclass(frozen=True)
class Photo:
    name: str  # the file's stem: names its outputs
    path: Path
    image: np.ndarray  # (H, W, 3) uint8 at its own size
    net_input: np.ndarray  # (h, w, 3) uint8 at the size the network runs at


@dataclass(frozen=True)
class Record:
    """What the summary files need of one segmented photo (not its pixels)."""

    photo_id: int  # 1, 2, ... in the order written: the COCO image id
    path: Path
    hw: tuple[int, int]
    counts: tuple[int, ...]  # pixels per class
    coco: list[dict[str, Any]]  # its COCO results, if asked for


@dataclass
class Written:
    records: list[Record]
    errors: list[str]  # one line per input that could not be used


# ---------------------------------------------------------------------------------- inputs
def gather(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """The files named by ``inputs`` (files, folders, globs) in order, once each, and one error
    line for each input that names none."""
    files: dict[Path, Path] = {}  # resolved -> as given: one file named twice is read once
    errors = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                errors.append(f"{arg}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
        elif path.exists() or not glob.has_magic(arg):
            found = [path]  # a missing file fails when read, with the fix
        else:
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                errors.append(f"{arg}: the pattern matches no file: check it")
        files.update((p.resolve(), p) for p in found if p.resolve() not in files)
    return list(files.values()), errors


def read_photo(path: Path, policy: str | int, seg: Segmenter) -> Photo:
    """Decode ``path`` at its own size and at the network's; :class:`SkipFile` if it can't be."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SkipFile("missing", "no such file: check the path") from None
    except OSError as exc:
        raise SkipFile(
            "unreadable", f"cannot read it ({exc.strerror}): check its permissions"
        ) from None
    image, hw, _ = decode_rgb(io.BytesIO(data), None)
    size = net_size(policy, hw, seg.info.image_size, seg.depth)
    if policy == "native":
        net_input = resize_rgb(image, size)
    else:  # the draft-and-resize path of preprocess: the very pixels the network was scored on
        net_input, _, _ = decode_rgb(io.BytesIO(data), size)
    return Photo(path.stem, path, image, net_input)


def error_line(path: Path, exc: SkipFile) -> str:
    if exc.reason != "unreadable image":
        return f"{path}: {exc.detail}"
    what = exc.detail.split(": ", 1)[-1]
    if what.startswith("not an image"):
        return f"{path}: {what}: pass a photo (JPEG, PNG, GIF, WebP, BMP, TIFF)"
    return f"{path}: damaged image ({what}): re-export or re-download it"


# --------------------------------------------------------------------------------- outputs
def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The photo with each pixel blended towards its class colour."""
    blended = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * COLOURS[labels]
    return blended.round().astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_photo(out: Path, photo: Photo, labels: np.ndarray) -> None:
    trimap = (labels + 1).astype(np.uint8)  # labels 0/1/2 -> trimap values 1/2/3
    atomic_write_bytes(out / "trimaps" / f"{photo.name}.png", encode(trimap, "PNG"))
    atomic_write_bytes(
        out / "overlays" / f"{photo.name}.jpg", encode(overlay(photo.image, labels), "JPEG")
    )


def record(photo_id: int, photo: Photo, labels: np.ndarray, with_coco: bool) -> Record:
    counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
    results = coco.image_results(photo_id, labels, len(CLASSES)) if with_coco else []
    return Record(photo_id, photo.path, labels.shape, tuple(counts.tolist()), results)


def write_coco(out: Path, records: list[Record]) -> None:
    images = [
        {"id": r.photo_id, "file_name": r.path.name, "height": r.hw[0], "width": r.hw[1]}
        for r in records
    ]
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(CLASSES)]
    gt: dict[str, Any] = {"images": images, "annotations": [], "categories": categories}
    atomic_write_json(out / "coco_images.json", gt)
    atomic_write_json(out / "coco_results.json", [res for r in records for res in r.coco])


def write_areas(out: Path, records: list[Record]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    share = [f"{c}_share" for c in CLASSES]
    writer.writerow(["name", "file", "height", "width", *[f"{c}_pixels" for c in CLASSES], *share])
    for r in records:
        shares = [f"{n / (r.hw[0] * r.hw[1]):.6f}" for n in r.counts]
        writer.writerow([r.path.stem, str(r.path), *r.hw, *r.counts, *shares])
    atomic_write_bytes(out / "areas.csv", buf.getvalue().encode())


# ------------------------------------------------------------------------------------ run
def batches(
    files: Iterable[Path], policy: str | int, seg: Segmenter, batch_size: int, errors: list[str]
) -> Iterator[list[Photo]]:
    """Decoded photos in batches, each of one network size; every file that can't be used is a
    line in ``errors``. At most ``batch_size`` photos are held at a time."""
    pending: dict[tuple[int, ...], list[Photo]] = {}
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            errors.append(
                f"{path}: its outputs would overwrite those of {seen[path.stem]} (same name): "
                "rename one, or predict it into another --out"
            )
            continue
        try:
            photo = read_photo(path, policy, seg)
        except SkipFile as exc:
            errors.append(error_line(path, exc))
            continue
        seen[path.stem] = path
        pending.setdefault(photo.net_input.shape, []).append(photo)
        if sum(map(len, pending.values())) == batch_size:
            yield from pending.values()
            pending = {}
    yield from pending.values()


def predict_files(
    seg: Segmenter,
    files: list[Path],
    out: Path,
    policy: str | int = "train",
    batch_size: int = 16,
    with_coco: bool = False,
) -> Written:
    """Segment ``files`` and write each one's trimap and overlay under ``out`` (a progress bar
    on a terminal)."""
    written = Written([], [])
    bar = tqdm(files, unit="image", desc="predict", disable=None)
    for batch in batches(bar, policy, seg, batch_size, written.errors):
        sizes = [p.image.shape[:2] for p in batch]
        segmented = seg.segment(np.stack([p.net_input for p in batch]), sizes)
        for photo, (labels, _) in zip(batch, segmented, strict=True):
            write_photo(out, photo, labels)
            written.records.append(record(len(written.records) + 1, photo, labels, with_coco))
    return written


def parse_size(value: str) -> str | int:
    if value in ("train", "native"):
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError("expected train, native or a side in pixels")
    return int(value)


def describe(policy: str | int, seg: Segmenter) -> str:
    """Which size the network runs at, and why that one."""
    s, m = seg.info.image_size, 2**seg.depth
    if policy == "train":
        return (
            f"{seg.info.arch} runs at {s}x{s}, its training size: each photo is squashed to it as "
            "the training photos were and the result scaled back (--size native or N for others)"
        )
    if policy == "native":
        return (
            f"{seg.info.arch} runs at each photo's own size rounded to multiples of {m}: more "
            f"detail, but pets cover more pixels than in its {s}x{s} training photos"
        )
    return (
        f"{seg.info.arch} runs at {policy}x{policy}, not its training size {s}x{s}: pets cover "
        f"{(policy / s) ** 2:.2g}x the pixels they did in training"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--model", type=Path, required=True, help="models/<arch>.pt")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--size", type=parse_size, default="train",
        help="train (default: the training size), native (each photo's own, rounded) or N (NxN)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=True,
        help="bf16 autocast where the hardware computes it natively (default: on)",
    )  # fmt: skip
    parser.add_argument("--coco", action="store_true", help="also coco_results.json (RLE)")
    parser.add_argument("--areas", action="store_true", help="also areas.csv (pixels per class)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ParamsError(f"--batch-size {args.batch_size}: must be at least 1")
    seg = Segmenter.load(args.model, args.device, args.bf16)
    if isinstance(args.size, int):
        seg.check_size((args.size, args.size))
    log.info("%s (%s on %s)", describe(args.size, seg), seg.precision, seg.device)
    files, errors = gather(args.inputs)
    written = predict_files(seg, files, args.out, args.size, args.batch_size, args.coco)
    if args.coco:
        write_coco(args.out, written.records)
    if args.areas:
        write_areas(args.out, written.records)
    errors += written.errors
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    print(f"{len(written.records)} of {len(files)} images segmented into {args.out}")
    if errors:
        sys.exit(cli.EXIT_USER_ERROR)


if __name__ == "__main__":
    cli.run(main)

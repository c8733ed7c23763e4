"""``data.source: coco``: your own labelled images, converted into the official layout.

Input (``data.coco``): a COCO *instances* JSON (``images``, ``annotations`` with polygon,
uncompressed-RLE or compressed-RLE ``segmentation``, ``categories``) and the folder its
``file_name`` entries are relative to; optionally a second JSON for the test split. Output: the
layout every source writes (see :mod:`petseg.data.download`), so everything downstream is
source-blind::

    images/NAME.jpg                 JPEG inputs linked or copied, other formats re-encoded
    annotations/trimaps/NAME.png    1 pet, 2 background, 3 border band
    annotations/{list,trainval,test}.txt
    annotations/coco_images.tsv     NAME -> split, COCO image id and file_name (for tracing back)

Decisions, and why:

- ``data.coco.categories`` maps COCO category *names* (ids differ between exports) to ``pet`` or
  ``background``. The pet pixels of an image are the union of its pet annotations (crowd regions
  included); background annotations are dropped. An annotated category the mapping does not name
  stops the stage (a typo would silently turn pets into background) unless
  ``data.coco.other_categories`` is ``background``. Images without any pet annotation are left out
  (and counted in the log): the official layout has a pet in every image.
- NAME is ``<category>_<k>``: the image's largest pet category (by mask area), as a lowercase ASCII
  slug, and a running number. The preprocess split is stratified by the name without its number
  (:func:`petseg.data.oxford.breed_of`), so it is stratified by category, as it is by breed on the
  official set; names are unique and safe whatever ``file_name`` holds (subfolders, spaces).
- Class ids: the categories that name images, numbered 1..K in case-insensitive alphabetical
  order (like the official breed ids); one species (1) and breed id = class id. Nothing downstream
  uses them; the list.txt header says which id is which category.
- The test split is the second JSON's images, or else :func:`petseg.data.split.split_trainval`
  with ``test_fraction`` and ``seed``: the same seeded split per category that preprocess uses for
  validation, so it is deterministic and a category with one image stays in trainval.
- The border band (:func:`trimap`) imitates the uncertain band of the official trimaps, which the
  networks learn as the third class.
- Everything that can be checked from the JSONs (structure, ids, categories, segmentation formats,
  files present) is checked before anything is written; image sizes are checked while writing,
  inside the caller's :func:`petseg.fileio.atomic_dir`. Each problem raises one
  :class:`~petseg.errors.DataError` naming the file or the params key.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils
from tqdm import tqdm

from petseg.config import CocoParams
from petseg.data.coco import decode
from petseg.data.oxford import _to_rgb, image_path, trimap_path
from petseg.data.split import split_trainval
from petseg.errors import DataError
from petseg.fileio import link_or_copy

log = logging.getLogger(__name__)

PET, BACKGROUND, BORDER = 1, 2, 3  # trimap values of the official layout
# Re-encoded (non-JPEG) inputs only, without chroma subsampling; JPEGs are taken as they are.
JPEG_QUALITY = 95
_JPEG_FORMATS = ("JPEG", "MPO")
_RELATIVE = "a relative path is relative to the working directory, the repository root under DVC"
_EXIF_ORIENTATION = 0x0112
_SHOWN = 5  # names listed in an error before "and N more"
# The largest height or width: JPEG's limit, and the most for which pycocotools' 32-bit pixel
# indices (height x width) cannot overflow.
MAX_SIDE = 65535


@dataclass(frozen=True)
class _Input:
    """One COCO JSON, its image folder, and the params keys that name them (for messages)."""

    json: Path
    images: Path
    json_key: str
    images_from: str  # which key (or rule) gave ``images``
    split: str | None  # "test" for data.coco.test_annotations; None: split by test_fraction


@dataclass(frozen=True)
class Item:
    """One image to write: where it comes from, its name and split, its pet mask as one RLE."""

    name: str
    split: str
    category: str
    source: _Input
    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    rle: dict[str, Any]


# ------------------------------------------------------------------------------------ public
def plan(params: CocoParams, out_dir: Path) -> list[Item]:
    """Read and check the JSON(s); return the images to write, named and split. Writes nothing."""
    inputs = _inputs(params)
    _check_outside(inputs, out_dir)
    docs = [_read_json(src) for src in inputs]
    defined = {c for doc in docs for c in doc["categories"].values()}
    unknown = sorted(set(params.categories) - defined)
    if unknown:
        raise DataError(
            f"data.coco.categories names {_few(unknown)}, which the COCO file(s) "
            f"{', '.join(str(s.json) for s in inputs)} do not define (their categories: "
            f"{_few(sorted(defined))}); category names are case-sensitive"
        )
    pets = sorted((n for n, role in params.categories.items() if role == "pet"), key=str.casefold)
    slugs = _slugs(pets)

    found: list[tuple[_Input, dict[str, Any], str, dict[str, Any]]] = []
    left_out = 0
    for src, doc in zip(inputs, docs, strict=True):
        unmapped: Counter[str] = Counter()
        for image in doc["images"].values():
            by_cat: dict[str, list[dict[str, Any]]] = {}
            for where, ann in image["annotations"]:
                name = doc["categories"][ann["category_id"]]
                role = params.categories.get(name)
                if role is None:
                    unmapped[name] += 1
                elif role == "pet":
                    rle = _segmentation_rle(ann.get("segmentation"), image, where)
                    by_cat.setdefault(name, []).append(rle)
            if not by_cat:
                left_out += 1
                continue
            areas = {c: sum(int(mask_utils.area(r)) for r in rles) for c, rles in by_cat.items()}
            largest = max(sorted(areas, key=str.casefold), key=lambda c: areas[c])
            merged = mask_utils.merge([r for rles in by_cat.values() for r in rles])
            found.append((src, image, largest, merged))
        if unmapped and params.other_categories == "error":
            listed = [f"{n!r} ({k} annotations)" for n, k in sorted(unmapped.items())]
            raise DataError(
                f"{src.json}: data.coco.categories does not map the annotated categories "
                f"{_few(listed)}: map each to pet or background, or set "
                "data.coco.other_categories: background"
            )
    if not found:
        raise DataError(
            f"no image in {', '.join(str(s.json) for s in inputs)} has an annotation of a category "
            f"that data.coco.categories maps to pet ({', '.join(pets)}): nothing to train on"
        )
    if left_out:
        log.info("%d images have no pet annotation and were left out", left_out)
    _check_files_exist(found)
    return _name_and_split(found, slugs, params)


def convert(items: list[Item], out_dir: Path, border_px: int, progress: bool = True) -> None:
    """Write ``items`` (from :func:`plan`) into the empty folder ``out_dir`` in the layout."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    for item in tqdm(items, desc="coco", unit="img", disable=None if progress else True):
        _write_image(item, image_path(out_dir, item.name))
        pet = decode(item.rle).astype(bool)
        Image.fromarray(trimap(pet, border_px)).save(trimap_path(out_dir, item.name))
    _write_lists(items, out_dir / "annotations")


def trimap(pet: np.ndarray, border_px: int) -> np.ndarray:
    """(H, W) bool pet mask -> uint8 trimap: 1 pet, 2 background, 3 a band along the outline.

    The band is ``border_px`` pixels wide in total and straddles the outline: pixels within
    ``border_px // 2`` inside it and within ``border_px - border_px // 2`` outside it (chessboard
    distance), so an odd width puts its extra pixel outside. The image frame is not an outline: a
    pet cut off by the edge gets no band there.
    """
    out = np.where(pet, PET, BACKGROUND).astype(np.uint8)
    if border_px:
        inner, outer = border_px // 2, border_px - border_px // 2
        band = _dilate(pet, outer) & _dilate(~pet, inner)
        out[band] = BORDER
    return out


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Max over a (2r+1) x (2r+1) square, the edge extended; two 1-D passes of shifted ORs.

    ``_dilate(~pet, inner) & _dilate(pet, outer)`` equals dilation minus erosion because the edge
    extension makes erosion the complement of dilating the complement.
    """
    if r == 0:
        return mask
    for _ in range(2):  # rows, then (transposed) columns; the second transpose restores the shape
        padded = np.pad(mask, ((r, r), (0, 0)), mode="edge")
        out = padded[: len(mask)].copy()
        for k in range(1, 2 * r + 1):
            out |= padded[k : k + len(mask)]
        mask = out.T
    return mask


# -------------------------------------------------------------------------------- reading
def _inputs(params: CocoParams) -> list[_Input]:
    """The JSON(s) to read with their image folders (null folders default as documented)."""
    main = Path(str(params.annotations))
    if params.images:
        images, images_from = Path(params.images), "data.coco.images"
    else:
        images, images_from = main.parent, "the folder of data.coco.annotations"
    inputs = [_Input(main, images, "data.coco.annotations", images_from, None)]
    if params.test_annotations:
        test = Path(params.test_annotations)
        if params.test_images:
            images, images_from = Path(params.test_images), "data.coco.test_images"
        elif not params.images:
            images, images_from = test.parent, "the folder of data.coco.test_annotations"
        inputs.append(_Input(test, images, "data.coco.test_annotations", images_from, "test"))
    return inputs


def _check_outside(inputs: list[_Input], out_dir: Path) -> None:
    """The output replaces ``out_dir`` as a whole: an input inside it would be deleted with it."""
    out = Path(out_dir).resolve()
    for src in inputs:
        for path, key in ((src.json, src.json_key), (src.images, src.images_from)):
            resolved = path.resolve()
            if resolved == out or out in resolved.parents:
                raise DataError(
                    f"{key} ({path}) lies inside the output {out_dir}; "
                    "keep the COCO dataset in a folder outside the stage's output"
                )


def _read_json(src: _Input) -> dict[str, Any]:
    """Parse and check a COCO instances JSON.

    Returns ``{"images": {id: image}, "categories": {id: name}}`` where each image has its
    ``annotations`` attached as ``(where, annotation)`` pairs, ``where`` locating it for messages;
    every id reference has been checked.
    """
    path, key = src.json, src.json_key
    try:
        with path.open("rb") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise DataError(
            f"{key} = {str(path)!r}: file {path.resolve()} not found ({_RELATIVE})"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{key} = {str(path)!r} is a folder; expected a COCO JSON file") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{key} = {str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{key} = {str(path)!r}: not valid JSON (not UTF-8 text)") from None
    expected = "an object with images, annotations and categories lists"
    if isinstance(doc, list):
        raise DataError(
            f"{path}: a list at the top level (a COCO results file?); {key} must be a COCO "
            f"instances file: {expected}"
        )
    keys = ("images", "annotations", "categories")
    missing = [k for k in keys if not (isinstance(doc, dict) and isinstance(doc.get(k), list))]
    if missing:
        raise DataError(
            f"{path} is not a COCO instances file ({key}): no {', '.join(missing)} list; "
            f"expected {expected}"
        )

    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        where = f"{path}: categories[{i}]"
        categories[_int(cat, "id", where)] = _str(cat, "name", where)

    images: dict[int, dict[str, Any]] = {}
    for i, image in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        image_id = _int(image, "id", where)
        if image_id in images:
            raise DataError(f"{where}: image id {image_id} is used twice")
        images[image_id] = {
            "id": image_id,
            "file_name": _str(image, "file_name", where),
            "height": _side(image, "height", where),
            "width": _side(image, "width", where),
            "annotations": [],
        }

    for i, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotations[{i}]" + (f" (id {ann['id']})" if _has(ann, "id") else "")
        image_id = _int(ann, "image_id", where)
        category_id = _int(ann, "category_id", where)
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id} is not among the file's images")
        if category_id not in categories:
            raise DataError(f"{where}: category_id {category_id} is not among its categories")
        images[image_id]["annotations"].append((where, ann))
    return {"images": images, "categories": categories}


def _has(entry: Any, key: str) -> bool:
    return isinstance(entry, dict) and key in entry


def _int(entry: Any, key: str, where: str, positive: bool = False) -> int:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise DataError(f"{where}: {key!r} must be {kind}, got {value!r}")
    return value


def _side(image: Any, key: str, where: str) -> int:
    """An image's height or width: pycocotools indexes a mask's pixels with 32-bit integers."""
    value = _int(image, key, where, positive=True)
    if value > MAX_SIDE:
        raise DataError(
            f"{where}: {key!r} = {value} is larger than any image can be here (at most "
            f"{MAX_SIDE} pixels): correct the image's {key} in the JSON"
        )
    return value


def _check_polygon(poly: list[float], image: dict[str, Any], where: str) -> None:
    """Every coordinate finite and within one image size of the image (tools overshoot an edge
    by a little; far beyond it is a broken export). pycocotools rasterises every point of the
    outline: a NaN or a huge coordinate makes it allocate without bound or crash."""
    for i, v in enumerate(poly):
        side = image["width"] if i % 2 == 0 else image["height"]
        if not (math.isfinite(v) and -side <= v <= 2 * side):
            axis = "x" if i % 2 == 0 else "y"
            what = "not a finite number" if not math.isfinite(v) else "far outside the image"
            raise DataError(
                f"{where}: polygon coordinate {axis} = {v!r} is {what} (image {image['width']}x"
                f"{image['height']}; expected {-side} to {2 * side}): fix or remove the annotation"
            )


def _str(entry: Any, key: str, where: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _segmentation_rle(seg: Any, image: dict[str, Any], where: str) -> dict[str, Any]:
    """An annotation's ``segmentation`` as one compressed RLE at the image's size.

    Polygons (a list of flat ``[x1, y1, x2, y2, ...]`` lists), uncompressed RLE (``counts`` a list
    of run lengths, column-major, as COCO stores crowd regions) and compressed RLE (``counts`` a
    string) are accepted. A polygon of fewer than 3 points encloses nothing and is dropped: it is
    not passed on, because pycocotools would read a 4-number polygon as a box.
    """
    h, w = image["height"], image["width"]
    if isinstance(seg, list):
        polygons = []
        for poly in seg:
            numbers = isinstance(poly, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in poly
            )
            if not numbers or len(poly) % 2:
                raise DataError(
                    f"{where}: each polygon must be a flat list [x1, y1, x2, y2, ...] of an even "
                    f"number of numbers, got {str(poly)[:80]}"
                )
            _check_polygon(poly, image, where)
            if len(poly) >= 6:
                polygons.append([float(v) for v in poly])
        if not polygons:  # an empty mask, as one run (no h x w array)
            return mask_utils.frPyObjects({"size": [h, w], "counts": [h * w]}, h, w)
        return mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise DataError(
            f"{where}: 'segmentation' must be polygons ([[x1, y1, ...], ...]) or RLE "
            f"({{size, counts}}), got {str(seg)[:80]} (data.source coco needs instance masks; "
            "bounding boxes alone cannot make a trimap)"
        )
    if seg["size"] != [h, w]:
        raise DataError(
            f"{where}: RLE size {seg['size']!r} differs from the [height, width] = [{h}, {w}] "
            f"of its image (id {image['id']})"
        )
    counts = seg["counts"]
    if isinstance(counts, list):
        runs = all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
        if not runs or sum(counts) != h * w:
            raise DataError(
                f"{where}: uncompressed RLE counts must be non-negative run lengths summing to "
                f"height x width = {h * w}"
            )
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if not isinstance(counts, str):
        raise DataError(f"{where}: RLE counts must be a list of run lengths or a string")
    runs = _compressed_runs(counts)
    if runs is None or min(runs, default=0) < 0 or sum(runs) != h * w:
        raise DataError(f"{where}: compressed RLE counts do not decode to a {h}x{w} mask")
    return {"size": [h, w], "counts": counts.encode("ascii")}


def _compressed_runs(counts: str) -> list[int] | None:
    """The run lengths of a compressed RLE string (None if malformed), as pycocotools reads them.

    Checked here because pycocotools does not check them: runs that do not add up to the mask
    size make it read or write past the mask (garbage, or a hang).

    Each run is a little-endian sequence of 5-bit groups stored as ``chr(48 + group)``; bit 0x20
    means "more groups follow" and bit 0x10 of the last group is the sign. From the fourth run on,
    the value is a difference to the run two before (pycocotools' ``rleFrString``).
    """
    runs: list[int] = []
    chars = [ord(ch) - 48 for ch in counts]
    p = 0
    while p < len(chars):
        x = k = 0
        while True:
            if p == len(chars) or not 0 <= chars[p] < 64:
                return None
            c = chars[p]
            x |= (c & 0x1F) << (5 * k)
            p, k = p + 1, k + 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)
                break
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def _check_files_exist(found: list[tuple[_Input, dict[str, Any], str, dict[str, Any]]]) -> None:
    missing: dict[_Input, list[str]] = {}
    for src, image, _, _ in found:
        path = src.images / image["file_name"]
        if not path.is_file():
            missing.setdefault(src, []).append(str(path))
    if missing:
        src, paths = next(iter(missing.items()))
        raise DataError(
            f"{len(paths)} image(s) listed in {src.json} are missing: {_few(paths)}; each "
            f"file_name is looked up under {src.images_from} ({src.images}; {_RELATIVE})"
        )


def _few(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


# ------------------------------------------------------------------------- naming and split
def _slugs(categories: list[str]) -> dict[str, str]:
    """Category name -> a unique lowercase ASCII slug (safe as a file name on every system)."""
    out: dict[str, str] = {}
    for k, name in enumerate(categories, start=1):
        slug = base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"
        while slug in out.values():  # "Tabby cat" and "tabby-cat" must not share names
            slug, k = f"{base}{k}", k + 1
        out[name] = slug
    return out


def _name_and_split(
    found: list[tuple[_Input, dict[str, Any], str, dict[str, Any]]],
    slugs: dict[str, str],
    params: CocoParams,
) -> list[Item]:
    """Number each category's images (JSON order, then image id) and assign the splits."""
    found = sorted(found, key=lambda f: (f[0].split is not None, f[1]["id"]))
    numbers: Counter[str] = Counter()
    items = []
    for src, image, category, rle in found:
        slug = slugs[category]
        numbers[slug] += 1
        items.append(
            Item(
                name=f"{slug}_{numbers[slug]}",
                split=src.split or "trainval",
                category=category,
                source=src,
                image_id=image["id"],
                file_name=image["file_name"],
                path=src.images / image["file_name"],
                height=image["height"],
                width=image["width"],
                rle=rle,
            )
        )
    if params.test_annotations:
        for split, key in (
            ("trainval", "data.coco.annotations"),
            ("test", "data.coco.test_annotations"),
        ):
            if not any(i.split == split for i in items):
                raise DataError(f"the {split} split would be empty: no image of {key} has a pet")
    else:
        _, test = split_trainval([i.name for i in items], params.test_fraction, params.seed)
        held_out = set(test)
        items = [replace(i, split="test" if i.name in held_out else "trainval") for i in items]
        if not held_out:
            raise DataError(
                f"the test split would be empty ({len(items)} images with pets): the "
                "data.coco.test_fraction split keeps a category's only image in trainval; add "
                "images, or give the test split its own JSON in data.coco.test_annotations"
            )
    return items


# -------------------------------------------------------------------------------- writing
def _write_image(item: Item, dest: Path) -> None:
    """Link or copy a JPEG; re-encode anything else; check the size against the JSON.

    A JPEG is not decoded here: a damaged one is skipped, with its reason, by preprocess, as for
    every other source.
    """
    path, rgb = item.path, None
    try:
        with Image.open(path) as im:
            if im.size != (item.width, item.height) or im.format not in _JPEG_FORMATS:
                im.load()  # decode now, while the file is open
                upright = im if im.size == (item.width, item.height) else _exif_rotated(im, item)
                rgb = _to_rgb(upright)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); {_listed(item)}") from None
    if rgb is None:
        link_or_copy(path, dest)
    else:
        rgb.save(dest, "JPEG", quality=JPEG_QUALITY, subsampling=0)


def _exif_rotated(im: Image.Image, item: Item) -> Image.Image:
    """The image turned upright when that explains a size that differs from the JSON's.

    Annotation tools show photos upright (EXIF orientation applied), so a JSON size with width and
    height swapped, on a photo whose EXIF orientation turns it by 90 degrees, means the masks were
    drawn on the turned photo: the stored image is turned the same way. Any other difference is an
    error, as the masks would not line up.
    """
    w, h = im.size
    if (w, h) == (item.height, item.width) and im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
        log.info("%s: EXIF orientation applied to match the JSON's size", item.path)
        return ImageOps.exif_transpose(im)
    raise DataError(
        f"{item.path} is {w}x{h} pixels but {_listed(item)} gives width x height "
        f"{item.width}x{item.height}: the masks would not line up; correct the JSON's width and "
        "height or the image"
    )


def _listed(item: Item) -> str:
    return f"image id {item.image_id} of {item.source.json} ({item.source.json_key})"


def _write_lists(items: list[Item], ann: Path) -> None:
    """The three official list files, plus ``coco_images.tsv`` mapping names back to the JSON."""
    categories = sorted({i.category for i in items}, key=str.casefold)
    class_ids = {c: k for k, c in enumerate(categories, start=1)}
    header = (
        "#Image CLASS-ID SPECIES BREED ID\n"
        f"#ID: 1:{len(class_ids)} Class ids: "
        + ", ".join(f"{k} {c}" for c, k in class_ids.items())
        + "\n#SPECIES: 1 (one species: converted from COCO, data.source: coco)\n"
        "#BREED ID: same as CLASS-ID\n"
    )

    def line(item: Item) -> str:
        k = class_ids[item.category]
        return f"{item.name} {k} 1 {k}\n"

    (ann / "list.txt").write_text(header + "".join(map(line, items)))
    for split in ("trainval", "test"):
        (ann / f"{split}.txt").write_text("".join(line(i) for i in items if i.split == split))
    rows = [f"{i.name}\t{i.split}\t{i.image_id}\t{i.file_name}\n" for i in items]
    (ann / "coco_images.tsv").write_text("#name\tsplit\timage_id\tfile_name\n" + "".join(rows))

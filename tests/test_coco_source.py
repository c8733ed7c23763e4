"""``data.source: coco``: a tiny COCO dataset built here goes through download and preprocess.

The expected masks are numpy rectangles and discs; the JSON carries them as polygons (rectangles
rasterise exactly: pixels x0..x1-1, y0..y1-1), uncompressed RLE (run lengths computed here) and
compressed RLE, so every check compares against shapes known independently of the converter.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from petseg.config import PreprocessParams, validate
from petseg.data import download as dl
from petseg.data.coco_source import plan
from petseg.data.oxford import breed_of, read_list, trimap_to_labels
from petseg.data.prepared import SPLITS, load_split
from petseg.data.preprocess import preprocess
from petseg.errors import DataError, ParamsError

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = [
    {"id": 1, "name": "cat"},
    {"id": 2, "name": "dog"},
    {"id": 3, "name": "person"},
    {"id": 7, "name": "car"},  # defined but never annotated: needs no mapping
]
MAPPING = {"cat": "pet", "dog": "pet", "person": "background"}


# ------------------------------------------------------------------------------ the dataset
def _rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, list[float]]:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask, [x0, y0, x1, y0, x1, y1, x0, y1]


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _runs(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths of the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(int)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _compressed(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _image_pixels(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = np.stack([x * 6, y * 8, (x + y) * 3], axis=-1)
    return (base + rng.integers(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)


@dataclass
class Dataset:
    root: Path  # holds instances.json and images/
    doc: dict[str, Any]  # the JSON as written
    pets: dict[str, np.ndarray]  # file_name -> expected pet mask (None: left out)

    @property
    def json(self) -> Path:
        return self.root / "instances.json"

    def write_json(self) -> None:
        self.json.write_text(json.dumps(self.doc))


def _build(root: Path) -> Dataset:
    """Nine images: four cats, three dogs, one without annotations, one with only a person."""
    images, annotations, pets = [], [], {}

    def add_image(file_name: str, w: int, h: int, fmt: str = "JPEG", mode: str = "RGB") -> int:
        image_id = len(images) + 1
        pixels = _image_pixels(image_id, h, w)
        path = root / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(pixels)
        if mode == "RGBA":
            im.putalpha(200)
        im.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        pets[file_name] = np.zeros((h, w), bool)
        return image_id

    def annotate(image_id: int, category: int, seg: Any, pet: np.ndarray | None, crowd=0) -> None:
        ann = {"id": 100 + len(annotations), "image_id": image_id, "category_id": category}
        annotations.append({**ann, "segmentation": seg, "iscrowd": crowd, "area": 0})
        if pet is not None:
            pets[images[image_id - 1]["file_name"]] |= pet

    i = add_image("a/cat one.jpg", 40, 30)  # subfolder and a space in file_name
    mask, poly = _rect(30, 40, 5, 5, 20, 25)
    annotate(i, 1, [poly], mask)

    i = add_image("b.png", 32, 24, "PNG")  # re-encoded; the person overlapping stays background
    mask, poly = _rect(24, 32, 10, 4, 30, 20)
    annotate(i, 2, [poly], mask)
    annotate(i, 3, [_rect(24, 32, 0, 0, 12, 12)[1]], None)

    i = add_image("c.png", 40, 30, "PNG", "RGBA")  # a crowd region as uncompressed RLE
    mask = _disc(30, 40, 20, 15, 8)
    annotate(i, 1, {"size": [30, 40], "counts": _runs(mask)}, mask, crowd=1)

    i = add_image("d.jpg", 40, 30)  # compressed RLE dog, larger than the cat beside it
    mask = _disc(30, 40, 15, 12, 6)
    annotate(i, 2, _compressed(mask), mask)
    mask, poly = _rect(30, 40, 30, 20, 36, 26)
    annotate(i, 1, [poly], mask)

    i = add_image("e.jpg", 40, 30)  # two polygons and a degenerate one (4 numbers, no area)
    mask1, poly1 = _rect(30, 40, 2, 2, 10, 10)
    mask2, poly2 = _rect(30, 40, 25, 15, 35, 28)
    annotate(i, 1, [poly1, poly2, [1, 1, 3, 3]], mask1 | mask2)

    add_image("f.jpg", 40, 30)  # no annotation: left out
    pets["f.jpg"] = None
    i = add_image("g.jpg", 40, 30)  # only a background category: left out
    annotate(i, 3, [_rect(30, 40, 0, 0, 40, 30)[1]], None)
    pets["g.jpg"] = None

    i = add_image("h.jpg", 40, 30)  # touches the image frame, which is not an outline
    mask, poly = _rect(30, 40, 0, 10, 15, 30)
    annotate(i, 2, [poly], mask)

    i = add_image("i.jpg", 36, 28)
    mask = _disc(28, 36, 18, 14, 10)
    annotate(i, 1, _compressed(mask), mask)

    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    data = Dataset(root, doc, pets)
    data.write_json()
    return data


@pytest.fixture
def coco(tmp_path: Path) -> Dataset:
    return _build(tmp_path / "coco")


def _params(data: Dataset, **coco: Any) -> Any:
    section = {
        "annotations": str(data.json),
        "images": str(data.root / "images"),
        "categories": MAPPING,
        "border_px": 3,
        **coco,
    }
    return validate({"data": {"source": "coco", "coco": section}}).data


def _download(data: Dataset, out: Path, **coco: Any) -> None:
    dl.download(_params(data, **coco), out, out.parent / "unused-archives", progress=False)


def _index(out: Path) -> dict[str, tuple[str, int, str]]:
    """coco_images.tsv: name -> (split, image id, file_name)."""
    lines = (out / "annotations" / "coco_images.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    return {name: (split, int(image_id), file_name) for name, split, image_id, file_name in rows}


def expected_trimap(pet: np.ndarray, border_px: int) -> np.ndarray:
    """Brute force: a pixel is border when the other class lies within its half of the band.

    Half of the band (border_px // 2) lies inside the pet, the rest outside; distances are
    chessboard; the window is clipped at the frame, so the frame is never an outline.
    """
    inner, outer = border_px // 2, border_px - border_px // 2
    out = np.where(pet, 1, 2).astype(np.uint8)
    h, w = pet.shape
    for y in range(h):
        for x in range(w):
            r = inner if pet[y, x] else outer
            window = pet[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            if r and (window != pet[y, x]).any():
                out[y, x] = 3
    return out


# ------------------------------------------------------------------------ download, preprocess
def test_coco_goes_through_download_and_preprocess(coco: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    _download(coco, out)
    assert dl.missing_layout(out) == []
    index = _index(out)
    # Named <largest pet category>_<k>, numbered by image id; images without a pet left out.
    assert {name: row[2] for name, row in index.items()} == {
        "cat_1": "a/cat one.jpg",
        "cat_2": "c.png",
        "cat_3": "e.jpg",
        "cat_4": "i.jpg",
        "dog_1": "b.png",
        "dog_2": "d.jpg",
        "dog_3": "h.jpg",
    }
    assert sorted(p.stem for p in (out / "images").glob("*.jpg")) == sorted(index)
    assert sorted(p.stem for p in (out / "annotations/trimaps").glob("*.png")) == sorted(index)

    for name, (_, _, file_name) in index.items():
        src, dst = coco.root / "images" / file_name, out / "images" / f"{name}.jpg"
        with Image.open(dst) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            got = np.asarray(im).astype(int)
        if file_name.endswith(".jpg"):
            assert dst.read_bytes() == src.read_bytes()  # taken as it is
        else:  # re-encoded: same pixels (transparency on black) up to JPEG loss
            rgba = Image.open(src).convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            want = np.asarray(Image.alpha_composite(black, rgba).convert("RGB"))
            assert np.abs(got - want).mean() < 2, name
        with Image.open(out / "annotations" / "trimaps" / f"{name}.png") as im:
            assert im.mode == "L"
            trimap = np.asarray(im)
        np.testing.assert_array_equal(
            trimap, expected_trimap(coco.pets[file_name], 3), err_msg=name
        )

    listed = read_list(out / "annotations" / "list.txt")
    trainval = read_list(out / "annotations" / "trainval.txt")
    test = read_list(out / "annotations" / "test.txt")
    assert sorted(e.name for e in listed) == sorted(index)
    assert sorted(listed, key=lambda e: e.name) == sorted(trainval + test, key=lambda e: e.name)
    assert {e.name: (e.class_id, e.species, e.breed_id) for e in listed} == {
        name: ((1, 1, 1) if name.startswith("cat") else (2, 1, 2)) for name in index
    }
    assert {e.name: "test" for e in test} == {n: s for n, (s, _, _) in index.items() if s == "test"}
    # test_fraction 0.2 per category: one cat of four and one dog of three.
    assert sorted(breed_of(e.name) for e in test) == ["cat", "dog"]
    header = (out / "annotations" / "list.txt").read_text().splitlines()[1]
    assert header == "#ID: 1:2 Class ids: 1 cat, 2 dog"

    prepared = tmp_path / "prepared"
    manifest = preprocess(out, prepared, PreprocessParams(image_size=32, workers=1), False)
    assert manifest["counts"] == {"train": 3, "val": 2, "test": 2}
    assert manifest["skipped"] == []
    for split in SPLITS:
        data = load_split(prepared, split)
        for name, mask in zip(data.names, data.masks, strict=True):
            trimap = Image.open(out / "annotations" / "trimaps" / f"{name}.png")
            resized = np.asarray(trimap.resize((32, 32), Image.Resampling.NEAREST))
            np.testing.assert_array_equal(mask, trimap_to_labels(resized), err_msg=name)
    assert load_split(prepared, "test").names == [e.name for e in test]


def test_border_zero_leaves_only_pet_and_background(coco: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    _download(coco, out, border_px=0)
    for name, (_, _, file_name) in _index(out).items():
        trimap = np.asarray(Image.open(out / "annotations" / "trimaps" / f"{name}.png"))
        np.testing.assert_array_equal(trimap, np.where(coco.pets[file_name], 1, 2))


def test_border_band_straddles_the_outline(tmp_path: Path) -> None:
    from petseg.data.coco_source import trimap

    pet = _rect(12, 12, 4, 4, 8, 8)[0]
    got = trimap(pet, 2)  # one pixel inside, one outside
    np.testing.assert_array_equal(got[2:10, 6], [2, 3, 3, 1, 1, 3, 3, 2])
    got = trimap(pet, 3)  # the odd pixel goes outside
    np.testing.assert_array_equal(got[1:11, 6], [2, 3, 3, 3, 1, 1, 3, 3, 3, 2])
    np.testing.assert_array_equal(trimap(np.ones((5, 5), bool), 4), np.ones((5, 5)))


def test_compressed_rle_runs_are_read_like_pycocotools() -> None:
    from petseg.data.coco_source import _compressed_runs

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        runs = _compressed_runs(_compressed(mask)["counts"])
        assert runs == _runs(mask)
    assert _compressed_runs("0e00000") == [0, 21, 0, 21, 0, 21]  # valid runs, wrong total
    assert _compressed_runs("0e") is None  # cut off inside a run


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    """Twenty images per category: 4 of each held out, the same ones for the same seed."""
    root = tmp_path / "many"
    (root / "images").mkdir(parents=True)
    Image.fromarray(_image_pixels(0, 8, 8)).save(root / "images" / "0.jpg")
    images, annotations = [], []
    for i in range(1, 41):
        (root / "images" / f"{i}.jpg").write_bytes((root / "images" / "0.jpg").read_bytes())
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8})
        poly = [1, 1, 6, 1, 6, 6, 1, 6]
        annotations.append(
            {"id": i, "image_id": i, "category_id": 1 + i % 2, "segmentation": [poly]}
        )
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    data = Dataset(root, doc, {})
    data.write_json()

    def test_split(seed: int) -> list[tuple[int, str]]:
        items = plan(_params(data, seed=seed).coco, tmp_path / "raw")
        return sorted((i.image_id, i.name) for i in items if i.split == "test")

    first = test_split(0)
    assert [name.split("_")[0] for _, name in first].count("cat") == 4 == len(first) - 4
    assert test_split(0) == first
    assert test_split(1) != first


def test_test_annotations_give_the_test_split(coco: Dataset, tmp_path: Path) -> None:
    test_doc = copy.deepcopy(coco.doc)
    test_doc["images"] = [im for im in test_doc["images"] if im["file_name"] in ("d.jpg", "e.jpg")]
    kept = {im["id"] for im in test_doc["images"]}
    test_doc["annotations"] = [a for a in test_doc["annotations"] if a["image_id"] in kept]
    (coco.root / "test.json").write_text(json.dumps(test_doc))
    out = tmp_path / "raw"
    # data.coco.test_images is null: the test file names are looked up under data.coco.images.
    _download(coco, out, test_annotations=str(coco.root / "test.json"))
    index = _index(out)
    test = {row[2] for row in index.values() if row[0] == "test"}
    assert test == {"d.jpg", "e.jpg"}
    assert len(index) == 9  # 7 from the main JSON (all trainval) and 2 from the test JSON
    assert [e.name for e in read_list(out / "annotations" / "test.txt")] == ["dog_4", "cat_5"]


def test_exif_rotated_photo_is_turned_as_annotated(coco: Dataset, tmp_path: Path) -> None:
    """A camera photo stored 40x30 with EXIF orientation 6 was annotated upright at 30x40."""
    stored = _image_pixels(9, 30, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(coco.root / "images" / "e.jpg", exif=exif, quality=95)
    entry = next(im for im in coco.doc["images"] if im["file_name"] == "e.jpg")
    entry["width"], entry["height"] = 30, 40
    mask, poly = _rect(40, 30, 3, 20, 25, 36)
    ann = next(a for a in coco.doc["annotations"] if a["image_id"] == entry["id"])
    ann["segmentation"] = [poly]
    coco.write_json()
    out = tmp_path / "raw"
    _download(coco, out, border_px=0)
    name = next(n for n, row in _index(out).items() if row[2] == "e.jpg")
    upright = np.asarray(Image.open(out / "images" / f"{name}.jpg")).astype(int)
    assert upright.shape == (40, 30, 3)
    assert np.abs(upright - np.rot90(stored, -1)).mean() < 4  # orientation 6: 90 degrees clockwise
    trimap = np.asarray(Image.open(out / "annotations" / "trimaps" / f"{name}.png"))
    np.testing.assert_array_equal(trimap, np.where(mask, 1, 2))


def test_other_categories_background_drops_unmapped(coco: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    mapping = {"cat": "pet"}  # dog and person unmapped
    _download(coco, out, categories=mapping, other_categories="background", border_px=0)
    index = _index(out)
    # d.jpg keeps its small cat, so it is a cat image now; the dog-only images are left out.
    kept = {row[2]: name for name, row in index.items()}
    assert sorted(kept) == ["a/cat one.jpg", "c.png", "d.jpg", "e.jpg", "i.jpg"]
    trimap = np.asarray(Image.open(out / "annotations" / "trimaps" / f"{kept['d.jpg']}.png"))
    np.testing.assert_array_equal(trimap, np.where(_rect(30, 40, 30, 20, 36, 26)[0], 1, 2))


# ------------------------------------------------------------------------------- bad inputs
Mutation = Callable[[Dataset], dict[str, Any]]  # edits the dataset, returns params overrides


def _set_json(text: str) -> Mutation:
    def mutate(data: Dataset) -> dict[str, Any]:
        data.json.write_text(text)
        return {}

    return mutate


def _edit(fn: Callable[[dict[str, Any]], None], **params: Any) -> Mutation:
    def mutate(data: Dataset) -> dict[str, Any]:
        fn(data.doc)
        data.write_json()
        return params

    return mutate


def _ann(doc: dict[str, Any], file_name: str) -> dict[str, Any]:
    image_id = next(im["id"] for im in doc["images"] if im["file_name"] == file_name)
    return next(a for a in doc["annotations"] if a["image_id"] == image_id)


def _missing_image(data: Dataset) -> dict[str, Any]:
    (data.root / "images" / "d.jpg").unlink()
    return {}


def _not_an_image(data: Dataset) -> dict[str, Any]:
    (data.root / "images" / "i.jpg").write_bytes(b"not an image at all")
    return {}


def _wrong_size(doc: dict[str, Any]) -> None:
    doc["images"][4]["width"] = 41  # e.jpg: polygons, which fit any size


def _only_one_per_category(doc: dict[str, Any]) -> None:
    doc["images"] = doc["images"][:2]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] <= 2]


BAD: dict[str, tuple[Mutation, list[str]]] = {
    "json missing": (
        lambda d: {"annotations": str(d.root / "nope.json")},
        ["nope.json", "not found", "data.coco.annotations"],
    ),
    "json is a folder": (
        lambda d: {"annotations": str(d.root)},
        ["is a folder", "data.coco.annotations"],
    ),
    "invalid json": (
        _set_json('{"images": ['),
        ["not valid JSON", "line 1", "data.coco.annotations"],
    ),
    "results file": (_set_json("[]"), ["COCO results file", "instances.json"]),
    "not coco": (
        _set_json('{"images": []}'),
        ["not a COCO instances file", "annotations, categories"],
    ),
    "image without id": (
        _edit(lambda doc: doc["images"][0].pop("id")),
        ["instances.json: images[0]", "'id' must be an integer"],
    ),
    "duplicate image id": (
        _edit(lambda doc: doc["images"][1].update(id=1)),
        ["images[1]", "image id 1 is used twice"],
    ),
    "unknown image": (
        _edit(lambda doc: doc["annotations"][0].update(image_id=999)),
        ["annotations[0] (id 100)", "image_id 999"],
    ),
    "unknown category id": (
        _edit(lambda doc: doc["annotations"][0].update(category_id=42)),
        ["annotations[0]", "category_id 42"],
    ),
    "unmapped category": (
        _edit(lambda doc: None, categories={"cat": "pet", "dog": "pet"}),
        ["data.coco.categories does not map", "'person' (2 annotations)", "other_categories"],
    ),
    "mapping names an unknown category": (
        _edit(lambda doc: None, categories={**MAPPING, "Cat": "pet"}),
        ["data.coco.categories names Cat", "case-sensitive"],
    ),
    "no pet images": (
        _edit(lambda doc: doc.update(annotations=[])),
        ["no image in", "maps to pet (cat, dog)"],
    ),
    "bbox only": (
        _edit(lambda doc: _ann(doc, "b.png").update(segmentation=None, bbox=[1, 2, 3, 4])),
        ["annotations[1] (id 101)", "'segmentation' must be polygons", "bounding boxes"],
    ),
    "odd polygon": (
        _edit(lambda doc: _ann(doc, "b.png").update(segmentation=[[1, 2, 3, 4, 5, 6, 7]])),
        ["annotations[1]", "even number"],
    ),
    "rle size": (
        _edit(lambda doc: _ann(doc, "d.jpg")["segmentation"].update(size=[31, 40])),
        ["RLE size [31, 40]", "[30, 40]"],
    ),
    "rle runs": (
        _edit(lambda doc: _ann(doc, "c.png")["segmentation"]["counts"].append(5)),
        ["uncompressed RLE", "summing to height x width = 1200"],
    ),
    "compressed rle garbage": (
        _edit(lambda doc: _ann(doc, "d.jpg")["segmentation"].update(counts="0e00000")),
        ["compressed RLE counts do not decode to a 30x40 mask"],
    ),
    "missing image": (
        _missing_image,
        ["1 image(s) listed in", "d.jpg", "data.coco.images"],
    ),
    "image folder": (
        lambda d: {"images": str(d.root / "elsewhere")},
        ["7 image(s)", "elsewhere", "data.coco.images"],
    ),
    "size mismatch": (
        _edit(_wrong_size),
        ["e.jpg is 40x30 pixels", "image id 5", "gives width x height 41x30"],
    ),
    "unreadable image": (_not_an_image, ["i.jpg: not a readable image", "image id 9"]),
    "empty test split": (
        _edit(_only_one_per_category),
        ["test split would be empty (2 images", "data.coco.test_annotations"],
    ),
    "input inside the output": (
        lambda d: {"images": str(d.root.parent / "work" / "raw" / "imgs")},
        ["lies inside the output"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_error_and_writes_nothing(
    case: str, coco: Dataset, tmp_path: Path
) -> None:
    mutate, expected = BAD[case]
    overrides = mutate(coco)
    out = tmp_path / "work" / "raw"
    with pytest.raises(DataError) as err:
        _download(coco, out, **overrides)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert not out.exists()
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


def test_a_failed_run_keeps_the_previous_output(coco: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    _download(coco, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _not_an_image(coco)
    with pytest.raises(DataError, match="not a readable image"):
        _download(coco, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")] == []


@pytest.mark.parametrize(
    ("coco", "expected"),
    [
        ({}, "data.coco.annotations = None is invalid"),
        ({"annotations": "x.json"}, "data.coco.categories = {} is invalid: expected at least one"),
        (
            {"annotations": "x.json", "categories": {"dog": "background"}},
            "data.coco.categories = {'dog': 'background'} is invalid",
        ),
        (
            {"annotations": "x.json", "categories": {"cat": "fg"}},
            "data.coco.categories.cat = 'fg' is invalid",
        ),
        (
            {"annotations": "x.json", "categories": {"cat": "pet"}, "test_images": "t"},
            "data.coco.test_images = 't' is invalid",
        ),
        ({"border_px": -1}, "data.coco.border_px = -1 is invalid"),
        ({"test_fraction": 1.0}, "data.coco.test_fraction = 1.0 is invalid"),
        ({"other_categories": "ignore"}, "data.coco.other_categories = 'ignore' is invalid"),
    ],
)
def test_params_errors_name_the_key(coco: dict[str, Any], expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        validate({"data": {"source": "coco", "coco": coco}})
    assert expected in str(err.value)


def test_stage_cli_reports_a_bad_json_and_exits_2(coco: Dataset, tmp_path: Path) -> None:
    coco.json.write_text("{oops")
    params = (
        f"data:\n  source: coco\n  coco:\n    annotations: {coco.json}\n"
        "    categories: {cat: pet, dog: pet, person: background}\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(params)
    cmd = [sys.executable, str(ROOT / "stages" / "download.py"), "--params", "params.yaml"]
    cmd += ["--out", "data/raw", "--archives", "data/archives"]
    proc = subprocess.run(cmd, cwd=work, env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "data.coco.annotations" in line and "not valid JSON" in line
    assert not (work / "data").exists()


def test_category_slugs_are_unique_safe_file_names() -> None:
    from petseg.data.coco_source import _slugs

    slugs = _slugs(["Tabby cat", "tabby-cat", "猫", "犬", "../x"])
    assert list(slugs.values()) == ["tabby_cat", "tabby_cat2", "class", "class4", "x"]

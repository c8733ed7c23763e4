"""The preprocess stage on real Oxford-IIIT Pet files (read in place) and broken copies in tmp."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg.config import PreprocessParams
from petseg.data.oxford import breed_of, load_image, load_pair, read_list, trimap_to_labels
from petseg.data.prepared import SPLITS, load_split
from petseg.data.preprocess import preprocess, split_trainval
from petseg.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def _names(raw: Path, list_name: str) -> list[str]:
    return [e.name for e in read_list(raw / "annotations" / list_name)]


def _expected_mask(raw: Path, name: str) -> np.ndarray:
    trimap = Image.open(raw / "annotations" / "trimaps" / f"{name}.png")
    return trimap_to_labels(np.asarray(trimap.resize((SIZE, SIZE), Image.Resampling.NEAREST)))


def _plain_image(path: Path) -> np.ndarray:
    rgb = Image.open(path).convert("RGB")
    return np.asarray(rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)).astype(int)


def _make_raw(root: Path, files: dict[str, tuple], trainval: list[str], test: list[str]) -> Path:
    """A dataset in the official layout; each file is a real path (symlinked), bytes, or None."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    for name, (image, trimap) in files.items():
        for src, dst in (
            (image, f"images/{name}.jpg"),
            (trimap, f"annotations/trimaps/{name}.png"),
        ):
            if isinstance(src, Path):
                (root / dst).symlink_to(src.resolve())
            elif isinstance(src, bytes):
                (root / dst).write_bytes(src)
    for list_name, names in (("trainval.txt", trainval), ("test.txt", test)):
        lines = [f"{n} 1 1 1" for n in names]
        (root / "annotations" / list_name).write_text("\n".join(lines) + "\n")
    return root


def _real(raw: Path, name: str) -> tuple[Path, Path]:
    return raw / "images" / f"{name}.jpg", raw / "annotations" / "trimaps" / f"{name}.png"


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


GOOD_TRAINVAL = ["Abyssinian_100", "Abyssinian_101", "Abyssinian_102", "Abyssinian_103"]
GOOD_TEST = ["Abyssinian_20", "Abyssinian_21"]


def _good_files(sample: Path) -> dict[str, tuple]:
    return {name: _real(sample, name) for name in GOOD_TRAINVAL + GOOD_TEST}


# ------------------------------------------------------------------------------ real sample
@pytest.fixture(scope="module")
def prepared(pets_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "prepared"
    manifest = preprocess(pets_sample, out, PreprocessParams(image_size=SIZE), progress=False)
    return out, manifest


def test_counts_match_the_list_files(prepared, pets_sample):
    out, manifest = prepared
    trainval, test = _names(pets_sample, "trainval.txt"), _names(pets_sample, "test.txt")
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == len(trainval) == 146
    assert manifest["counts"]["test"] == len(test) == 82
    splits = {s: load_split(out, s) for s in SPLITS}
    assert sorted(splits["train"].names + splits["val"].names) == sorted(trainval)
    assert splits["test"].names == test
    for split in splits.values():
        assert split.images.shape == (len(split), SIZE, SIZE, 3)
        assert split.images.dtype == np.uint8 and split.masks.dtype == np.uint8
    assert manifest["skipped"] == [] and manifest["notes"] == []


def test_masks_are_the_nearest_resized_trimaps(prepared, pets_sample):
    out, _ = prepared
    for split in SPLITS:
        data = load_split(out, split)
        assert set(np.unique(data.masks).tolist()) == {0, 1, 2}
        for name, mask in zip(data.names, data.masks, strict=True):
            np.testing.assert_array_equal(mask, _expected_mask(pets_sample, name), err_msg=name)


def test_images_match_a_plain_resize_and_sizes_are_recorded(prepared, pets_sample):
    out, manifest = prepared
    data = load_split(out, "test")
    sizes = manifest["splits"]["test"]["original_sizes"]
    for i in range(0, len(data), 10):
        path = pets_sample / "images" / f"{data.names[i]}.jpg"
        w, h = Image.open(path).size
        assert sizes[i] == [h, w]
        # Reduced-size decoding differs slightly from a full decode, but not in content.
        assert np.abs(data.images[i].astype(int) - _plain_image(path)).mean() < 6, data.names[i]


def test_manifest_statistics(prepared):
    out, manifest = prepared
    for split in SPLITS:
        entry, data = manifest["splits"][split], load_split(out, split)
        assert sum(entry["breeds"].values()) == entry["count"] == len(data)
        freq = np.bincount(np.asarray(data.masks).ravel(), minlength=3) / data.masks.size
        assert list(entry["class_frequencies"]) == ["pet", "background", "border"]
        np.testing.assert_allclose(list(entry["class_frequencies"].values()), freq, atol=1e-5)
    assert manifest["image_size"] == SIZE
    assert manifest["params"]["val_fraction"] == 0.15


def test_manifest_split_is_the_seeded_stratified_split(prepared, pets_sample):
    _, manifest = prepared
    train, val = split_trainval(_names(pets_sample, "trainval.txt"), 0.15, 0)
    assert manifest["splits"]["train"]["names"] == train
    assert manifest["splits"]["val"]["names"] == val


# ------------------------------------------------------------------------------------ split
def test_split_is_deterministic_and_changes_with_the_seed(pets_sample):
    names = _names(pets_sample, "trainval.txt")
    assert split_trainval(names, 0.15, 0) == split_trainval(names, 0.15, 0)
    assert split_trainval(names, 0.15, 0) != split_trainval(names, 0.15, 1)


def test_split_is_stratified_by_breed(pets_sample):
    names = _names(pets_sample, "trainval.txt")
    train, val = split_trainval(names, 0.15, 3)
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    total, in_val = Counter(map(breed_of, names)), Counter(map(breed_of, val))
    for breed, n in total.items():
        if n >= 2:
            assert 1 <= in_val[breed] < n, breed
            assert abs(in_val[breed] - 0.15 * n) <= 1, breed
        else:
            assert in_val[breed] == 0, breed


def test_split_fraction_is_close_on_a_large_list():
    names = [f"breed{b}_{i}" for b in range(37) for i in range(1, 101)]
    _, val = split_trainval(names, 0.15, 0)
    assert len(val) / len(names) == pytest.approx(0.15, abs=0.01)
    assert set(Counter(map(breed_of, val)).values()) == {15}


# ----------------------------------------------------------------------------------- quirks
@pytest.fixture
def quirks_raw(pets_sample, pets_quirks, tmp_path):
    files = _good_files(pets_sample)
    files.update({n: _real(pets_quirks, n) for n in ("Abyssinian_34", "Abyssinian_5")})
    trainval, test = [*GOOD_TRAINVAL, "Abyssinian_34"], [*GOOD_TEST, "Abyssinian_5"]
    return _make_raw(tmp_path / "raw", files, trainval, test)


def test_quirks_are_converted_to_rgb_with_a_note(quirks_raw, pets_quirks, tmp_path):
    params = PreprocessParams(image_size=SIZE, on_wrong_format="convert")
    manifest = preprocess(quirks_raw, tmp_path / "out", params, progress=False)
    notes = {n["name"]: n["note"] for n in manifest["notes"] if "converted" in n["note"]}
    assert "GIF" in notes["Abyssinian_34"] and "PNG" in notes["Abyssinian_5"]
    assert ("Abyssinian_34", "trimap has no pet pixels") in [
        (n["name"], n["note"]) for n in manifest["notes"]
    ]
    assert manifest["skipped"] == []
    for name, split in (("Abyssinian_34", None), ("Abyssinian_5", "test")):
        split = split or next(s for s in ("train", "val") if name in manifest["splits"][s]["names"])
        data = load_split(tmp_path / "out", split)
        image = data.images[data.names.index(name)]
        assert image.shape == (SIZE, SIZE, 3)
        expected = _plain_image(pets_quirks / "images" / f"{name}.jpg")
        assert np.abs(image.astype(int) - expected).mean() < 3, name


def test_quirks_are_skipped_with_a_reason(quirks_raw, tmp_path):
    params = PreprocessParams(image_size=SIZE, on_wrong_format="skip", max_bad_fraction=0.5)
    manifest = preprocess(quirks_raw, tmp_path / "out", params, progress=False)
    skipped = {s["name"]: s for s in manifest["skipped"]}
    assert set(skipped) == {"Abyssinian_34", "Abyssinian_5"}
    assert skipped["Abyssinian_5"]["split"] == "test"
    assert all(s["reason"] == "wrong format" for s in skipped.values())
    assert "GIF" in skipped["Abyssinian_34"]["detail"]
    kept = [n for s in SPLITS for n in manifest["splits"][s]["names"]]
    assert sorted(kept) == sorted(GOOD_TRAINVAL + GOOD_TEST)


# ------------------------------------------------------------------------------- bad files
BROKEN = {
    "Broken_1": "unreadable image",
    "Broken_2": "size mismatch",
    "Broken_3": "bad trimap values",
    "Broken_4": "missing image",
    "Broken_5": "missing trimap",
}


@pytest.fixture(scope="module")
def broken_raw(pets_sample, tmp_path_factory):
    image, trimap = _real(pets_sample, "Abyssinian_100")
    other_trimap = _real(pets_sample, "american_bulldog_100")[1]
    assert Image.open(other_trimap).size != Image.open(image).size
    seven = np.asarray(Image.open(trimap)).copy()
    seven[:5, :5] = 7
    files = _good_files(pets_sample)
    files.update(
        {
            "Broken_1": (image.read_bytes()[: image.stat().st_size // 2], trimap),
            "Broken_2": (image, other_trimap),
            "Broken_3": (image, _png_bytes(seven)),
            "Broken_4": (None, trimap),
            "Broken_5": (image, None),
        }
    )
    root = tmp_path_factory.mktemp("broken") / "raw"
    return _make_raw(root, files, GOOD_TRAINVAL + list(BROKEN)[:3], GOOD_TEST + list(BROKEN)[3:])


@pytest.mark.parametrize("workers", [1, 2])
def test_each_bad_file_is_skipped_with_its_reason(broken_raw, tmp_path, workers):
    params = PreprocessParams(image_size=SIZE, max_bad_fraction=1.0, workers=workers)
    manifest = preprocess(broken_raw, tmp_path / "out", params, progress=False)
    # The rows of skipped files are dropped: every row is its manifest name's pair.
    for split in SPLITS:
        data = load_split(tmp_path / "out", split)
        assert len(data.images) == len(data.masks) == manifest["counts"][split]
        for row, name in enumerate(data.names):
            pair = load_pair(broken_raw, name, SIZE, "convert")
            assert np.array_equal(data.images[row], pair.image), (split, name)
            assert np.array_equal(data.masks[row], pair.mask), (split, name)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["manifest.json", *(f"{s}_{k}.npy" for s in SPLITS for k in ("images", "masks"))]
    )
    assert {s["name"]: s["reason"] for s in manifest["skipped"]} == BROKEN
    details = {s["name"]: s["detail"] for s in manifest["skipped"]}
    assert "truncated" in details["Broken_1"]
    assert "[7]" in details["Broken_3"]
    assert manifest["counts"]["test"] == len(GOOD_TEST)
    assert sum(manifest["counts"].values()) == len(GOOD_TRAINVAL + GOOD_TEST)


def test_too_many_bad_files_is_an_error_and_writes_nothing(broken_raw, tmp_path):
    params = PreprocessParams(image_size=SIZE, max_bad_fraction=0.2)
    with pytest.raises(DataError) as info:
        preprocess(broken_raw, tmp_path / "out", params, progress=False)
    message = str(info.value)
    assert "preprocess.max_bad_fraction" in message and "5 of 11" in message
    assert "missing image x1" in message and "Broken_1" in message
    assert list(tmp_path.iterdir()) == []


def test_an_empty_split_is_an_error(pets_sample, tmp_path):
    one_per_breed = ["Abyssinian_100", "american_bulldog_100"]
    files = {n: _real(pets_sample, n) for n in [*one_per_breed, "Abyssinian_20"]}
    raw = _make_raw(tmp_path / "raw", files, one_per_breed, ["Abyssinian_20"])
    with pytest.raises(DataError, match="split val would be empty"):
        preprocess(raw, tmp_path / "out", PreprocessParams(image_size=SIZE), progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- oxford unit
def test_trimap_to_labels():
    labels = trimap_to_labels(np.array([[1, 2, 3], [3, 2, 1]], dtype=np.uint8))
    np.testing.assert_array_equal(labels, [[0, 1, 2], [2, 1, 0]])
    assert labels.dtype == np.uint8
    for bad in (0, 4, 7, 300):
        with pytest.raises(ValueError, match="outside 1..3"):
            trimap_to_labels(np.array([1, bad], dtype=np.int32))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs_become_rgb_with_a_note(pets_sample, tmp_path, mode):
    path = tmp_path / "x.jpg"
    Image.open(pets_sample / "images" / "Abyssinian_100.jpg").convert(mode).save(path)
    image, hw, notes = load_image(path, SIZE, "skip")
    assert image.shape == (SIZE, SIZE, 3) and hw == (500, 394)
    assert notes == [f"JPEG in mode {mode}, converted to RGB"]
    assert np.abs(image.astype(int) - _plain_image(path)).mean() < 6


def test_read_list_skips_headers_and_names_a_malformed_line(pets_sample, tmp_path):
    entries = read_list(pets_sample / "annotations" / "list.txt")
    assert len(entries) == 228 and entries[0].name == "Abyssinian_100"
    assert (
        entries[0].breed == "Abyssinian" and breed_of("american_bulldog_12") == "american_bulldog"
    )
    bad = tmp_path / "trainval.txt"
    bad.write_text("Abyssinian_1 1 1 1\n\nAbyssinian_2 1 cat 1\n")
    with pytest.raises(DataError, match=r"trainval.txt:3: expected"):
        read_list(bad)


# ---------------------------------------------------------------------------------------- CLI
def _cli(tmp_path: Path, params_text: str, raw: Path) -> subprocess.CompletedProcess:
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    cmd = [sys.executable, str(ROOT / "stages" / "preprocess.py"), "--params", str(params)]
    cmd += ["--raw", str(raw), "--out", str(tmp_path / "prepared"), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("preprocess:\n  image_size: 100\n", "preprocess.image_size"),
        ("preprocess:\n  imagesize: 64\n", "unknown key preprocess.imagesize"),
        ("preprocess:\n  on_wrong_format: fix\n", "preprocess.on_wrong_format"),
    ],
)
def test_cli_rejects_bad_params_naming_the_key(tmp_path, pets_sample, text, key):
    result = _cli(tmp_path, text, pets_sample)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "prepared").exists()


def test_cli_prints_a_summary(tmp_path, quirks_raw):
    result = _cli(tmp_path, f"preprocess:\n  image_size: {SIZE}\n  workers: 1\n", quirks_raw)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("preprocess: train ")
    assert "0 skipped, 3 notes" in result.stdout
    assert (tmp_path / "prepared" / "manifest.json").is_file()


# ------------------------------------------------------------------------- parallel decoding
def test_parallel_decoding_equals_one_process(pets_sample, prepared, tmp_path):
    """Two processes (this one and a forked worker) give byte-identical arrays and manifest."""
    out, manifest = prepared  # default workers: one per core
    single = preprocess(
        pets_sample, tmp_path / "one", PreprocessParams(image_size=SIZE, workers=1), progress=False
    )
    three = preprocess(
        pets_sample,
        tmp_path / "three",
        PreprocessParams(image_size=SIZE, workers=3),
        progress=False,
    )
    for other in (single, three):
        assert {k: v for k, v in other.items() if k != "params"} == {
            k: v for k, v in manifest.items() if k != "params"
        }
    for split in SPLITS:
        ref = load_split(out, split)
        for folder in ("one", "three"):
            got = load_split(tmp_path / folder, split)
            assert np.array_equal(got.images, ref.images) and np.array_equal(got.masks, ref.masks)


def _crash_in_workers(parent: int, how: str):
    import os

    from petseg.data import oxford

    real = oxford.load_pair

    def load_pair(*args, **kwargs):
        if os.getpid() != parent:
            if how == "exit":
                os._exit(3)
            raise RuntimeError("boom in a worker")
        return real(*args, **kwargs)

    return load_pair


@pytest.mark.parametrize(
    ("how", "error", "match"),
    [("exit", DataError, "worker process died \\(exit code 3\\)"), ("raise", RuntimeError, "boom")],
)
def test_a_failing_worker_process_is_an_error_and_writes_nothing(
    pets_sample, tmp_path, monkeypatch, how, error, match
):
    import os

    from petseg.data import preprocess as module

    monkeypatch.setattr(module, "load_pair", _crash_in_workers(os.getpid(), how))
    with pytest.raises(error, match=match):
        preprocess(
            pets_sample, tmp_path / "out", PreprocessParams(image_size=SIZE, workers=2), False
        )
    assert not (tmp_path / "out").exists()

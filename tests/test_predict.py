"""``python -m petseg.predict`` on real photos (the quirks included), against evaluate's scores, and
with bad inputs and bad model files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from petseg import NUM_CLASSES, cli, predict
from petseg.config import EvaluateParams
from petseg.data.oxford import read_list, trimap_path, trimap_to_labels
from petseg.data.prepared import load_split
from petseg.evaluate import EvalPaths, evaluate_all
from petseg.metrics import confusion_matrix, mean_iou

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> int:
    """``predict.main`` as the command runs it; its exit code."""
    try:
        cli.run(lambda: predict.main(argv))
    except SystemExit as exc:
        return int(exc.code)
    return 0


def _trimap(out: Path, name: str) -> np.ndarray:
    with Image.open(out / "trimaps" / f"{name}.png") as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_real_photos_get_trimaps_and_overlays_at_their_own_size(
    tiny_trained, pets_sample, pets_quirks, tmp_path
):
    out = tmp_path / "out"
    photos = sorted((pets_sample / "images").glob("*.jpg"))[::50]
    photos += sorted((pets_quirks / "images").iterdir())  # a GIF and an RGBA PNG named .jpg
    argv = [*map(str, photos[:-2]), str(pets_quirks / "images"), "--model", str(tiny_trained.model)]
    assert _run([*argv, "--out", str(out), "--coco", "--areas"]) == 0
    areas = {row["name"]: row for row in csv.DictReader((out / "areas.csv").open())}
    for photo in photos:
        with Image.open(photo) as im:
            w, h = im.size
        trimap = _trimap(out, photo.stem)
        assert trimap.shape == (h, w)
        assert set(np.unique(trimap)) <= {1, 2, 3}
        with Image.open(out / "overlays" / f"{photo.stem}.jpg") as im:
            assert im.size == (w, h) and im.mode == "RGB"
        counts = np.bincount(trimap.ravel(), minlength=4)[1:]
        row = areas[photo.stem]
        assert [int(row[f"{c}_pixels"]) for c in ("pet", "background", "border")] == list(counts)
    # The COCO results load with pycocotools against their images and decode to the trimaps.
    gt = COCO(str(out / "coco_images.json"))
    res = gt.loadRes(json.loads((out / "coco_results.json").read_text()))
    for image in gt.dataset["images"]:
        rebuilt = np.zeros((image["height"], image["width"]), np.uint8)
        for ann in res.loadAnns(res.getAnnIds(imgIds=image["id"])):
            rebuilt[res.annToMask(ann).astype(bool)] = ann["category_id"]
        assert np.array_equal(rebuilt, _trimap(out, Path(image["file_name"]).stem))


def _evaluate(tiny_trained, root: Path, bf16: bool) -> dict:
    """The evaluate stage's scores of the tiny model (its test metrics file)."""
    params = EvaluateParams(bootstrap=0, n_examples=2, bf16=bf16, device="cpu")
    paths = EvalPaths(
        prepared=tiny_trained.prepared, raw=tiny_trained.raw,
        models={"unet": tiny_trained.model}, train_metrics={"unet": tiny_trained.metrics},
        metrics_dir=root / "metrics", summary=root / "summary.json",
        scores=root / "scores.json", plots=root / "plots",
        predictions=root / "predictions", coco=root / "coco",
    )  # fmt: skip
    evaluate_all(params, paths)
    return json.loads((root / "metrics" / "unet.json").read_text())


def _miou(pred: list[np.ndarray], truth: list[np.ndarray]) -> float:
    cm = sum(
        confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), NUM_CLASSES)
        for p, t in zip(pred, truth, strict=True)
    )
    return mean_iou(cm)


def test_predict_reproduces_evaluate_test_miou(tiny_trained, tmp_path):
    bf16 = True  # as evaluate.bf16 by default: bf16 autocast where the CPU has it
    scores = _evaluate(tiny_trained, tmp_path / "eval", bf16)
    test = load_split(tiny_trained.prepared, "test", mmap=False)
    # At the training size: the prepared test split as photos of that size, batched as evaluate.
    rows = tmp_path / "rows"
    rows.mkdir()
    for name, image in zip(test.names, test.images, strict=True):
        Image.fromarray(image).save(rows / f"{name}.png")
    model = ["--model", str(tiny_trained.model), "--device", "cpu"]
    batch = ["--batch-size", str(EvaluateParams().batch_size)]
    assert _run([str(rows), *model, *batch, "--out", str(tmp_path / "a")]) == 0
    pred = [_trimap(tmp_path / "a", n).astype(np.int64) - 1 for n in test.names]
    assert _miou(pred, list(test.masks)) == pytest.approx(scores["miou"], abs=1e-6)
    # At each photo's own size: the original test files against the original trimaps, the way
    # evaluate scores it (its original-resolution pass runs in float32).
    names = [e.name for e in read_list(tiny_trained.raw / "annotations" / "test.txt")]
    photos = [str(tiny_trained.raw / "images" / f"{n}.jpg") for n in names]
    assert _run([*photos, *model, "--no-bf16", "--out", str(tmp_path / "b")]) == 0
    pred = [_trimap(tmp_path / "b", n).astype(np.int64) - 1 for n in names]
    truth = [
        trimap_to_labels(np.asarray(Image.open(trimap_path(tiny_trained.raw, n)))) for n in names
    ]
    original = scores["original_resolution"]["miou"]
    assert _miou(pred, truth) == pytest.approx(original, abs=1e-6)


def test_bad_inputs_cost_one_line_each_and_the_good_ones_are_written(
    tiny_trained, pets_sample, tmp_path
):
    good = pets_sample / "images" / "Abyssinian_1.jpg"
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:3000])
    empty = tmp_path / "empty"
    empty.mkdir()
    twin = tmp_path / "twin" / good.name
    twin.parent.mkdir()
    twin.write_bytes(good.read_bytes())
    fixes = {  # each bad input -> what its line must say to do
        notes: "pass a photo",
        cut: "re-export",
        tmp_path / "missing.jpg": "check the path",
        tmp_path / "none*.png": "check it",
        empty: "holds no image",
        twin: "rename one",
    }
    bad = list(fixes)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "petseg.predict", "--model", str(tiny_trained.model), "--out"]
    proc = subprocess.run(
        [*cmd, str(out), str(good), *map(str, bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for path, fix in fixes.items():
        (line,) = [e for e in errors if e.startswith(f"error: {path}:")]
        assert fix in line
    assert "1 of 5 images" in proc.stdout  # every file named was tried
    written = sorted(p.name for p in out.rglob("*"))  # and no temporary file is left behind
    assert written == ["Abyssinian_1.jpg", "Abyssinian_1.png", "overlays", "trimaps"]


@pytest.mark.parametrize("kind", ["missing", "text", "foreign", "pickled"])
def test_a_missing_or_foreign_model_file_is_one_line(kind, pets_quirks, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif kind == "pickled":
        torch.save(torch.nn.Conv2d(3, 3, 1), path)
    out = tmp_path / "out"
    assert _run([str(pets_quirks / "images"), "--model", str(path), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {path}")
    assert ("run its train stage" if kind == "missing" else "written by a train stage") in line
    assert not out.exists()


def test_the_network_runs_at_any_size_it_fits(tiny_trained, pets_quirks, tmp_path, capsys, caplog):
    model = ["--model", str(tiny_trained.model), str(pets_quirks / "images")]
    caplog.set_level("INFO", "petseg.predict")
    assert _run([*model, "--out", str(tmp_path / "t")]) == 0
    assert "runs at 32x32, its training size" in caplog.text
    for size in ("native", "48"):
        assert _run([*model, "--size", size, "--out", str(tmp_path / size)]) == 0
        for photo in (pets_quirks / "images").iterdir():
            with Image.open(photo) as im:
                assert _trimap(tmp_path / size, photo.stem).shape == im.size[::-1]
    assert "not its training size" in caplog.text
    assert _run([*model, "--size", "30", "--out", str(tmp_path / "bad")]) == 2
    assert "multiples of 2**depth = 4 (e.g. 28 or 32)" in capsys.readouterr().err


def test_inputs_are_files_folders_and_globs_each_once(tmp_path):
    for name in ("a.jpg", "b.PNG", "c.txt", "sub/d.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, errors = predict.gather(
        [str(tmp_path), str(tmp_path / "sub" / ".." / "a.jpg"), str(tmp_path / "*.txt"), "x*"]
    )
    # A folder gives its images (not its subfolders); a named file is tried whatever its suffix.
    assert [f.name for f in files] == ["a.jpg", "b.PNG", "c.txt"]
    assert errors == ["x*: the pattern matches no file: check it"]


def test_overlay_tints_each_class_towards_its_colour():
    image = np.full((2, 3, 3), 200, np.uint8)
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    tinted = predict.overlay(image, labels)
    assert tinted.shape == image.shape and tinted.dtype == np.uint8
    expected = (1 - predict.OVERLAY_ALPHA) * 200 + predict.OVERLAY_ALPHA * predict.COLOURS
    assert np.array_equal(tinted[0], expected.round().astype(np.uint8))

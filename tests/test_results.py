"""The results schema: every file reads back as written, and a renamed, extra or missing key is
an error that names the file and the key."""

from __future__ import annotations

import json
import math

import pytest

from petseg import CLASSES
from petseg import results as R
from petseg.errors import DataError
from petseg.results import (
    Interval,
    Intervals,
    Summary,
    TestMetrics,
    TrainMetrics,
)


def _scores(miou: float) -> dict:
    iou = dict(zip(CLASSES, (miou + 0.1, miou + 0.2, miou - 0.3), strict=True))
    return {
        "pixel_accuracy": 0.9,
        "miou": miou,
        "iou": iou,
        "mean_dice": miou + 0.05,
        "dice": {c: v + 0.05 for c, v in iou.items()},
        "binary_pet_iou": miou + 0.15,
        "confusion": [[5, 1, 0], [1, 6, 1], [0, 2, 3]],
    }


def _test(arch: str, miou: float, seconds: float = 100.0) -> TestMetrics:
    return TestMetrics(
        arch=arch, image_size=64, n_test=12, **_scores(miou),
        original_resolution=R.Scores(**_scores(miou - 0.01)), inference_images_per_s=50.0,
        inference_peak_memory_mb=120.5, train_seconds=seconds, train_images_per_s=40.0,
        best_epoch=3, best_val_miou=miou + 0.02, params=1_000_000, gflops_per_image=1.5,
        boundary_iou=miou - 0.2, epochs=4,
    )  # fmt: skip


def _train(arch: str) -> TrainMetrics:
    return TrainMetrics(
        arch=arch, best_epoch=3, best_val_miou=0.6, final_val_miou=0.58, epochs=4,
        train_seconds=12.5, train_images_per_s=40.0, params=1_000_000, gflops_per_image=1.5,
        image_size=64, world_size=1, device="cpu", hardware="x86_64 CPU, 2 cores", threads=2,
        precision="fp32",
    )  # fmt: skip


def _interval(low: float, high: float) -> dict:
    return {"low": low, "high": high}


INTERVALS = Intervals.model_validate(
    {
        "level": 0.95,
        "resamples": 200,
        "over": "12 test images",
        "miou": {a: _interval(0.5, 0.7) for a in ("strided", "unet")},
        "diff": {
            R.pair_key("strided", "unet"): {
                "miou": _interval(-0.04, 0.01),
                "iou": {"border": _interval(-0.08, -0.02)},
            }
        },
    }
)
TESTS = {"strided": _test("strided", 0.6, seconds=90.0), "unet": _test("unet", 0.62)}
SUMMARY = Summary.of(TESTS, INTERVALS)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "kind, record",
    [
        (TrainMetrics, _train("unet")),
        (TestMetrics, TESTS["unet"]),
        (TestMetrics, TESTS["unet"].model_copy(update={"original_resolution": None})),
        (Summary, SUMMARY),
        (Summary, Summary.of(TESTS, None)),
    ],
    ids=["train", "test", "test-without-original-resolution", "summary", "summary-no-intervals"],
)
def test_each_record_reads_back_as_written(tmp_path, kind, record):
    path = tmp_path / "record.json"
    R.write(path, record)
    assert R.read(kind, path) == record


def test_optional_keys_without_a_value_are_left_out_of_the_file(tmp_path):
    R.write(tmp_path / "summary.json", Summary.of(TESTS, None))
    assert "intervals" not in json.loads((tmp_path / "summary.json").read_text())


def test_test_metrics_start_with_what_identifies_them(tmp_path):
    R.write(tmp_path / "unet.json", TESTS["unet"])
    keys = list(json.loads((tmp_path / "unet.json").read_text()))
    assert keys[:3] == ["arch", "image_size", "n_test"]
    assert keys[3:5] == ["pixel_accuracy", "miou"]  # then the scores, in the record's order
    # cost and mlflow_run_id: None (not timed; trained without MLflow)
    assert sorted(keys) == sorted(TestMetrics.model_fields.keys() - {"cost", "mlflow_run_id"})


def test_plot_table_reads_back_with_its_columns(tmp_path):
    rows = [{"arch": "unet", "class": c, "iou": 1 / 3, "dice": 0.5} for c in CLASSES]
    R.write_csv(tmp_path / "per_class.csv", R.PER_CLASS_COLUMNS, rows)
    df = R.read_csv(tmp_path / "per_class.csv", R.PER_CLASS_COLUMNS)
    assert tuple(df.columns) == R.PER_CLASS_COLUMNS
    assert df["iou"].tolist() == pytest.approx([0.333333] * 3)  # six significant digits
    with pytest.raises(DataError, match=r"per_class\.csv lacks the columns pixels: run dvc"):
        R.read_csv(tmp_path / "per_class.csv", ("arch", "pixels"))


# ------------------------------------------------------------------------------ bad files
def _summary_file(tmp_path, edit) -> str:
    """SUMMARY written, edited as a dict, read back: the DataError's message."""
    data = SUMMARY.model_dump(exclude_none=True)
    edit(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        R.read(Summary, path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and message.endswith(": run dvc repro evaluate")
    return message


def test_a_renamed_key_names_the_file_and_both_keys(tmp_path):
    def flatten(data):
        row = data["architectures"]["unet"]
        row["iou_border"] = row.pop("iou")["border"]

    message = _summary_file(tmp_path, flatten)
    assert "architectures.unet.iou missing" in message
    assert "architectures.unet.iou_border not expected" in message
    assert "strided" not in message


def test_an_extra_key_names_the_file_and_the_key(tmp_path):
    message = _summary_file(tmp_path, lambda d: d["intervals"].update(method="bca"))
    assert "intervals.method not expected" in message


def test_a_missing_class_names_the_key_and_the_classes(tmp_path):
    message = _summary_file(tmp_path, lambda d: d["architectures"]["strided"]["iou"].pop("pet"))
    assert "architectures.strided.iou" in message and "pet, background, border" in message


def test_absent_and_malformed_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"unet\.json not found: run its train stage"):
        R.read_train(tmp_path / "unet.json")
    (tmp_path / "unet.json").write_text("{")
    with pytest.raises(DataError, match=r"unet\.json is not valid JSON"):
        R.read(TestMetrics, tmp_path / "unet.json")


# ------------------------------------------------------------------------------ look-ups
def test_difference_works_for_either_order():
    stored = INTERVALS.difference("strided", "unet", "miou")
    assert stored == Interval(low=-0.04, high=0.01)
    assert INTERVALS.difference("unet", "strided", "miou") == Interval(low=-0.01, high=0.04)
    border = INTERVALS.difference("unet", "strided", "iou.border")
    assert border == Interval(low=0.02, high=0.08)
    assert stored.includes_zero and not border.includes_zero


def test_difference_is_none_for_a_pair_or_metric_not_compared():
    assert INTERVALS.difference("strided", "unpool", "miou") is None
    assert INTERVALS.difference("unet", "strided", "iou.pet") is None
    assert INTERVALS.difference("unet", "strided", "pixel_accuracy") is None


def test_summary_values_best_and_dotted_paths():
    assert SUMMARY.archs == ["strided", "unet"]
    assert SUMMARY.values("iou.border") == pytest.approx({"strided": 0.3, "unet": 0.32})
    unet = SUMMARY.architectures["unet"]
    assert unet.at("iou.border") == unet.iou["border"] == pytest.approx(0.32)
    assert SUMMARY.best["miou"] == "unet" and SUMMARY.best["iou.border"] == "unet"
    assert SUMMARY.best["train_seconds"] == "strided"  # lower is better
    assert TESTS["unet"].at("original_resolution.miou") == pytest.approx(0.61)
    assert not Interval(low=math.nan, high=0.1).finite


def test_headline_holds_the_few_numbers_dvc_shows_and_they_read_back(tmp_path):
    scores = R.headline(TESTS)
    assert list(scores) == list(TESTS)
    for arch, row in scores.items():
        parsed = R.parse(R.HeadlineRow, row, f"{arch} row")
        for metric in R.HEADLINE:
            assert parsed.at(metric) == TESTS[arch].at(metric)
        leaves = [x for v in row.values() for x in (v.values() if isinstance(v, dict) else [v])]
        assert len(leaves) == len(R.HEADLINE)  # nothing but the headline: one column each
        assert all(isinstance(x, int | float) for x in leaves)  # dvc exp show shows numbers
    bad = {**scores["unet"], "iou": {"border": 0.1, "pet": 0.9}, "hardware": "cpu"}
    with pytest.raises(DataError, match="hardware not expected"):
        R.parse(R.HeadlineRow, bad, "unet row")

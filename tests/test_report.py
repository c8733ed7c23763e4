"""The report stage: a discussion computed from the numbers, tables equal to the metrics JSON, a
self-contained HTML page, a Markdown twin, and clear errors for missing inputs."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import check_page, print_layout
from PIL import Image

from petseg import CLASSES
from petseg import results as R
from petseg.config import DataParams, ModelsParams, PreprocessParams, TrainParams
from petseg.errors import DataError
from petseg.report import (
    LEGEND,
    ReportPaths,
    build_report,
    discussion,
    load_inputs,
    setup_rows,
    title,
)
from petseg.report.figures import curves_chart
from petseg.results import Intervals, Summary, TestMetrics, TrainMetrics

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COUNTS = {"train": 80, "val": 14, "test": 12}
IMAGES = ["img_1", "img_2", "img_3", "img_4"]
# plots/eval/examples.csv: the grid files evaluate wrote and the test image each shows.
EXAMPLES = [
    {"file": "fixed_01.png", "kind": "fixed", "rank": 1, "image": "img_1"},
    {"file": "hardest_01.png", "kind": "hardest", "rank": 1, "image": "img_3"},
]


def numbers(pet, background, border, *, seconds=100.0, ips=50.0, params=1_000_000, gflops=1.0):
    """One architecture's test results (the fields of TestMetrics but arch, image_size and
    n_test); mIoU is the mean of the three class IoUs."""
    iou = dict(zip(CLASSES, (pet, background, border), strict=True))
    miou = (pet + background + border) / 3
    dice = {c: 2 * v / (1 + v) for c, v in iou.items()}
    scores = {
        "pixel_accuracy": 0.8 + miou / 10,
        "miou": miou,
        "iou": iou,
        "mean_dice": sum(dice.values()) / 3,
        "dice": dice,
        "binary_pet_iou": pet + 0.0123456,
        "confusion": [[8, 1, 1], [1, 8, 1], [1, 1, 8]],
    }
    return {
        **scores,
        "original_resolution": {**scores, "miou": miou - 0.0111111},
        "inference_images_per_s": ips,
        "inference_peak_memory_mb": 120.0,
        "train_seconds": seconds,
        "train_images_per_s": 40.0,
        "best_epoch": 3,
        "best_val_miou": miou,
        "params": params,
        "gflops_per_image": gflops,
        "boundary_iou": pet - 0.2,
        "epochs": 5,  # best epoch 3 of 5: training had converged
    }


# strided wins on mIoU and on the border; unpool is the cheapest in every cost column.
STRIDED_WINS = {
    "strided": numbers(0.85, 0.90, 0.45, seconds=300.0, ips=80.0, params=2_000_000, gflops=2.5),
    "unpool": numbers(0.80, 0.88, 0.40, seconds=200.0, ips=100.0, params=1_500_000, gflops=2.0),
    "unet": numbers(0.78, 0.86, 0.35, seconds=400.0, ips=60.0, params=3_000_000, gflops=3.5),
}
UNET_WINS = {
    "strided": numbers(0.80, 0.88, 0.40, seconds=300.0),
    "unpool": numbers(0.78, 0.87, 0.38, seconds=200.0),
    "unet": numbers(0.90, 0.93, 0.55, seconds=400.0),
}
TINY_DIFFERENCES = {
    "strided": numbers(0.800, 0.900, 0.400),
    "unpool": numbers(0.801, 0.900, 0.401),
    "unet": numbers(0.802, 0.901, 0.401),
}


def records_of(results) -> dict[str, TestMetrics]:
    """metrics/test/<arch>.json as the evaluate stage writes them."""
    return {a: TestMetrics(arch=a, image_size=64, n_test=12, **r) for a, r in results.items()}


def summary_of(results, intervals: Intervals | None = None) -> Summary:
    """metrics/summary.json as the evaluate stage builds it from the test records."""
    return Summary.of(records_of(results), intervals)


def train_record(arch: str, r: dict) -> TrainMetrics:
    return TrainMetrics(
        arch=arch, best_epoch=3, best_val_miou=r["miou"], final_val_miou=r["miou"], epochs=3,
        train_seconds=r["train_seconds"], train_images_per_s=40.0, params=r["params"],
        gflops_per_image=r["gflops_per_image"], image_size=64, world_size=1, device="cpu",
        hardware="x86_64 CPU, 2 cores", threads=2, precision="fp32",
    )  # fmt: skip


def _curve(r: dict) -> list[dict]:
    """plots/train/<arch>.csv: three epochs."""
    return [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_miou": r["miou"] * e / 3,
         "val_pixel_acc": 0.9, **{f"val_iou_{c}": r["iou"][c] * e / 3 for c in CLASSES},
         "lr": 0.001, "epoch_seconds": 1.0, "images_per_s": 40.0}
        for e in (1, 2, 3)
    ]  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _write_eval_plots(ev: Path, tests: dict[str, TestMetrics]) -> None:
    """plots/eval/*.csv as evaluate writes them."""
    per_image = [
        {R.PER_IMAGE_INDEX: name, **{a: 0.4 + 0.1 * i + 0.01 * k for k, a in enumerate(tests)}}
        for i, name in enumerate(IMAGES)
    ]
    R.write_csv(
        ev / "confusion.csv", R.CONFUSION_COLUMNS,
        [{"arch": a, "actual": t, "predicted": p, "pixels": 10, "fraction": float(t == p)}
         for a in tests for t in CLASSES for p in CLASSES],
    )  # fmt: skip
    R.write_csv(
        ev / "per_class.csv", R.PER_CLASS_COLUMNS,
        [{"arch": a, "class": c, "iou": r.iou[c], "dice": r.dice[c]}
         for a, r in tests.items() for c in CLASSES],
    )  # fmt: skip
    R.write_csv(
        ev / "runtime.csv", R.RUNTIME_COLUMNS,
        [{"arch": a, "train_seconds": r.train_seconds, "train_images_per_s": r.train_images_per_s,
          "inference_images_per_s": r.inference_images_per_s,
          "gflops_per_image": r.gflops_per_image, "params": r.params} for a, r in tests.items()],
    )  # fmt: skip
    R.write_csv(ev / "per_image.csv", (R.PER_IMAGE_INDEX, *tests), per_image)


def write_outputs(root: Path, results: dict, experiments: list[dict] | None = None) -> ReportPaths:
    """A complete fake set of evaluate outputs (and their inputs) under ``root``."""
    tests = records_of(results)
    for arch, r in results.items():
        R.write(root / "metrics/test" / f"{arch}.json", tests[arch])
        R.write(root / "metrics/train" / f"{arch}.json", train_record(arch, r))
        R.write_csv(root / "plots/train" / f"{arch}.csv", R.TRAIN_CURVE_COLUMNS, _curve(r))
    R.write(root / "metrics/summary.json", summary_of(results))
    _write_eval_plots(root / "plots/eval", tests)
    grid = np.zeros((8, 5 * 8, 3), dtype=np.uint8)
    (root / "plots/predictions").mkdir(parents=True)
    for row in EXAMPLES:
        Image.fromarray(grid).save(root / "plots/predictions" / row["file"])
    R.write_csv(root / "plots/eval/examples.csv", R.EXAMPLE_COLUMNS, EXAMPLES)
    _write_json(
        root / "data/prepared/manifest.json",
        {"image_size": 64, "counts": COUNTS, "skipped": [],
         "splits": {"test": {"class_frequencies": {"pet": 0.3, "background": 0.65,
                                                   "border": 0.05}}}},
    )  # fmt: skip
    if experiments is not None:
        _write_csv(root / "plots/experiments.csv", experiments)
    return ReportPaths(
        summary=root / "metrics/summary.json",
        test_metrics=root / "metrics/test",
        train_metrics=root / "metrics/train",
        train_plots=root / "plots/train",
        eval_plots=root / "plots/eval",
        predictions=root / "plots/predictions",
        manifest=root / "data/prepared/manifest.json",
        out=root / "report",
        experiments=root / "plots/experiments.csv",
        params=_write_params(root / "params.yaml"),
    )


PARAMS = {
    "data": DataParams(source="synthetic"),
    "preprocess": PreprocessParams(image_size=64),
    "train": TrainParams(epochs=3, batch_size=32, seed=7),
    "models": ModelsParams(),
}


def _write_params(path: Path) -> Path:
    """params.yaml holding PARAMS (what the notebook's code cells load)."""
    path.write_text(
        "data: {source: synthetic}\npreprocess: {image_size: 64}\n"
        "train: {epochs: 3, batch_size: 32, seed: 7}\n"
    )
    return path


class Tables(HTMLParser):
    """Every <table class=...> of a page as rows of (text, is_best) cells, and every <img> src."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, bool]]]] = {}
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self._table = self._cell = None
        self.items: list[str] = []
        self._li: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ["", "best" in (attrs.get("class") or "").split()]
        elif tag == "img":
            self.srcs.append(attrs.get("src", ""))
        elif tag == "li":
            self._li = []
        if "href" in attrs:
            self.hrefs.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._li is not None:
            self.items.append("".join(self._li))
            self._li = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        if self._li is not None:
            self._li.append(data)


def as_dicts(rows: list[list[str]]) -> dict[str, dict[str, str]]:
    """First row = header; first column = row key."""
    header = rows[0]
    return {r[0]: dict(zip(header, r, strict=True)) for r in rows[1:]}


def markdown_table(text: str, first_header: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def markdown_section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def strided_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("strided")
    paths = write_outputs(root, STRIDED_WINS)
    index = build_report(paths, **PARAMS)
    html = index.read_text(encoding="utf-8")
    markdown = (paths.out / "README.md").read_text(encoding="utf-8")
    return paths, html, markdown


# ----------------------------------------------------------------------------- discussion
def _facts(results, **kwargs):
    kwargs = {"counts": COUNTS, "data_source": "synthetic", "seed": 7, **kwargs}
    return discussion(summary_of(results), **kwargs)


def test_report_says_strided_is_best_and_skips_did_not_help(strided_report):
    _, html, markdown = strided_report
    md_items = [
        line[2:]
        for line in markdown_section(markdown, "Discussion").splitlines()
        if line[:2] == "- "
    ]
    html_items = Tables(html).items
    assert md_items == html_items
    text = " ".join(md_items)
    # 0.7333 vs unpool 0.6933 and unet 0.6633
    assert (
        "strided is the best architecture on test mIoU (0.7333), 4.00 points ahead of the "
        "runner-up unpool (0.6933) and 7.00 points ahead of the worst, unet (0.6633)"
    ) in text
    assert "Skip connections did not help on mIoU" in text
    assert "Skip connections did not help on border IoU" in text
    assert "Skip connections helped" not in text
    assert "unet is the best" not in text
    assert "border: strided (0.4500)" in text


def test_unet_winning_by_a_lot_means_skips_helped():
    facts = _facts(UNET_WINS)
    text = " ".join(facts)
    assert text.startswith("unet is the best architecture on test mIoU")
    skip = [s for s in facts if s.startswith("Skip connections")]
    assert len(skip) == 2
    assert skip[0].startswith("Skip connections helped on mIoU")
    assert "against 0.6933 for strided" in skip[0]  # compared with the better network w/o skips
    assert skip[1].startswith("Skip connections helped on border IoU")
    assert "+15.00 points" in skip[1]


def test_tiny_differences_are_no_measurable_difference():
    facts = _facts(TINY_DIFFERENCES)
    text = " ".join(facts)
    assert "is the best architecture" not in text
    assert "no measurable difference between them" in facts[0]
    skip = [s for s in facts if s.startswith("Skip connections")]
    assert all("made no measurable difference" in s for s in skip) and len(skip) == 2
    assert "is level with strided" in text or "is level with it" in text


def test_small_but_measurable_difference_is_flagged_as_possible_noise():
    results = dict(TINY_DIFFERENCES, unet=numbers(0.82, 0.91, 0.40))  # +0.7 points mIoU
    skip = [s for s in _facts(results) if s.startswith("Skip connections")]
    assert skip[0].startswith("Skip connections helped on mIoU")
    assert "noise" in skip[0]


def test_time_vs_accuracy_and_resampling_are_computed():
    facts = _facts(STRIDED_WINS)
    text = " ".join(facts)
    assert "unpool is the fastest to train (200.0 s; next strided 300.0 s)" in text
    assert "unpool is the fastest at inference (100.0 images/s" in text
    # strided: +100 s over unpool for +4 mIoU points -> 25 s per point
    assert "takes 100.0 s more to train than unpool (1.5× the time)" in text
    assert "25.0 extra seconds per mIoU point" in text
    assert "At inference strided processes 80.0 images/s, 1.25× slower than unpool" in text
    assert "unpool (unpooling with the pooling indices) trails strided" in text
    nearest = " ".join(_facts(STRIDED_WINS, unpool_upsample="nearest"))
    assert "pooling indices" not in nearest and "nearest" in nearest


def test_equal_timings_are_not_ranked():
    results = {
        a: dict(r, train_seconds=100.0 + i, inference_images_per_s=50.0 + i)
        for i, (a, r) in enumerate(UNET_WINS.items())
    }
    text = " ".join(_facts(results))
    assert "are equally fast to train" in text and "are equally fast at inference" in text
    assert "costs no extra training time" in text


def test_caveats_follow_the_inputs():
    synthetic = " ".join(_facts(STRIDED_WINS))
    assert "one training seed (seed 7)" in synthetic
    assert "below about 1 point of mIoU may be noise" in synthetic
    assert "12 test images" in synthetic and "80 training" in synthetic
    assert "synthetic" in synthetic
    real = " ".join(_facts(STRIDED_WINS, data_source="oxford-iiit-pet"))
    assert "synthetic" not in real
    many = " ".join(_facts(STRIDED_WINS, counts={"train": 3000, "val": 680, "test": 3669}))
    assert "3669 test images" in many and "so few test images" not in many


# --------------------------------------------------------------------------------- tables
SCORE_COLUMNS = {
    "mIoU ↑": lambda r: r["miou"],
    "Pixel acc. ↑": lambda r: r["pixel_accuracy"],
    "IoU pet ↑": lambda r: r["iou"]["pet"],
    "IoU background ↑": lambda r: r["iou"]["background"],
    "IoU border ↑": lambda r: r["iou"]["border"],
    "Mean Dice ↑": lambda r: r["mean_dice"],
    "Binary pet IoU ↑": lambda r: r["binary_pet_iou"],
    "Boundary IoU ↑": lambda r: r["boundary_iou"],
    "mIoU orig. res. ↑": lambda r: r["original_resolution"]["miou"],
}
COST_COLUMNS = {
    "Params (M) ↓": (lambda r: r["params"] / 1e6, 3),
    "GFLOPs/img ↓": (lambda r: r["gflops_per_image"], 4),
    "Train s (wall) ↓": (lambda r: r["train_seconds"], 1),
    "Inference img/s (wall) ↑": (lambda r: r["inference_images_per_s"], 1),
}


def _check_values(table: dict[str, dict[str, str]], paths: ReportPaths) -> None:
    assert list(table) == list(STRIDED_WINS)
    for arch, row in table.items():
        res = json.loads((paths.test_metrics / f"{arch}.json").read_text())
        for col, get in SCORE_COLUMNS.items():
            assert row[col].removesuffix(" ★") == f"{get(res):.4f}", (arch, col)
        for col, (get, decimals) in COST_COLUMNS.items():
            assert abs(float(row[col].removesuffix(" ★")) - get(res)) <= 0.5 * 10**-decimals


def test_html_table_equals_the_metrics_json(strided_report):
    paths, html, _ = strided_report
    rows = Tables(html).tables["metrics"]
    _check_values(as_dicts([[text for text, _ in row] for row in rows]), paths)


def test_markdown_table_equals_the_metrics_json(strided_report):
    paths, _, markdown = strided_report
    rows = markdown_table(markdown, "Architecture")
    plain = [[c.replace("**", "") for c in row] for row in rows]
    _check_values(as_dicts(plain), paths)


BEST = {"mIoU ↑": "strided", "IoU border ↑": "strided", "Params (M) ↓": "unpool",
        "GFLOPs/img ↓": "unpool", "Train s (wall) ↓": "unpool",
        "Inference img/s (wall) ↑": "unpool"}  # fmt: skip


def test_best_value_per_column_is_marked_on_the_right_cell(strided_report):
    _, html, markdown = strided_report
    rows = Tables(html).tables["metrics"]
    header = [text for text, _ in rows[0]]
    for col, arch in BEST.items():
        j = header.index(col)
        marked = [row[0][0] for row in rows[1:] if row[j][1]]
        assert marked == [arch], col
        starred = [row[0][0] for row in rows[1:] if row[j][0].endswith("★")]
        assert starred == [arch], col
    md = markdown_table(markdown, "Architecture")
    for col, arch in BEST.items():
        j = md[0].index(col)
        assert [r[0] for r in md[1:] if r[j].startswith("**") and r[j].endswith("★**")] == [arch]


# ------------------------------------------------------------------------ self-containment
def test_html_is_self_contained_and_every_image_is_an_embedded_png(strided_report):
    _, html, _ = strided_report
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    page = Tables(html)
    assert page.hrefs == []
    assert len(page.srcs) == 5 + 2  # five charts, two prediction rows
    for src in page.srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        Image.open(io.BytesIO(png)).verify()


@pytest.mark.slow
def test_html_opens_in_chromium_without_errors_and_every_image_loads(strided_report, chromium):
    paths, _, _ = strided_report
    page = check_page(chromium, paths.out / "index.html")
    assert page.problems == []
    assert page.images == 5 + 2


def test_the_printed_metrics_table_is_the_screen_table_turned(strided_report):
    _, html, _ = strided_report
    page = Tables(html)
    screen, printed = page.tables["metrics"], page.tables["metrics-print print-only"]
    turned = [list(column) for column in zip(*screen, strict=True)]
    turned[0][0] = ("Metric", False)
    assert printed == turned  # every value and every best mark, one row per metric
    assert len(printed[0]) == 1 + len(STRIDED_WINS)  # as wide as there are networks


# A fourth network with a long name: the table's width does not depend on how many there are.
FOUR = {**STRIDED_WINS, "unet_noskip": numbers(0.70, 0.80, 0.20)}


@pytest.mark.slow
def test_the_page_prints_to_a4_without_a_table_wider_than_the_page(tmp_path, chromium):
    index = build_report(write_outputs(tmp_path, FOUR), **PARAMS)
    layout = print_layout(chromium, index)
    assert layout.printable_width == pytest.approx(703.0, abs=1)  # A4 less the 12 mm margins
    # Printed, the metrics table is turned: one row per metric, one column per network.
    assert {t["cls"] for t in layout.tables} == {"setup", "metrics-print print-only"}
    for table in layout.tables:
        assert table["left"] >= 0 and table["right"] <= layout.printable_width + 0.5, table
    assert layout.page_width <= layout.printable_width + 0.5  # nothing else overflows either
    assert layout.pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page(?!s)", layout.pdf)) >= 2
    # The check can fail: with the screen styles at that width the metrics table overflows.
    screen = print_layout(chromium, index, media="screen")
    assert {t["cls"] for t in screen.tables} == {"setup", "metrics"}
    metrics = next(t for t in screen.tables if t["cls"] == "metrics")
    assert metrics["right"] > screen.printable_width


def test_markdown_figures_are_png_files_beside_it(strided_report):
    paths, _, markdown = strided_report
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(refs) == 7
    for ref in refs:
        assert not ref.startswith(("/", "http"))
        assert (paths.out / ref).read_bytes().startswith(PNG_SIGNATURE)


def test_prediction_grid_is_explained(strided_report):
    _, html, markdown = strided_report
    for text in (html, markdown):
        assert "input | ground truth | strided | unpool | unet" in text
        assert "Under each prediction, its error map" in text and "red (#d7191c)" in text
        assert "pet orange" in text.replace(" (orange)", " orange")
        # The scores come from per_image.csv: the file names carry none.
        scores = "Per-image mIoU: strided {}, unpool {}, unet {}."
        assert "fixed 1 of 1: img_1. " + scores.format("0.40", "0.41", "0.42") in text
        assert "hardest 1 of 1: img_3. " + scores.format("0.60", "0.61", "0.62") in text
        assert text.index("Fixed test images") < text.index("fixed 1 of 1")
        assert text.index("fixed 1 of 1") < text.index("Hardest test images")
        assert text.index("Hardest test images") < text.index("hardest 1 of 1")
    assert "![hardest 1 of 1: img_3" not in markdown  # alt text is the stable file name
    assert "(figures/predictions/hardest_01.png)" in markdown
    for colour in LEGEND.values():
        assert colour in html


def test_legend_is_the_grid_palette_in_hex():
    assert LEGEND == {"pet": "#e66101", "background": "#282828", "border": "#faf0b4"}


def test_a_grid_listed_in_examples_csv_but_missing_is_an_error(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    (paths.predictions / "hardest_01.png").unlink()
    with pytest.raises(DataError, match=r"lacks hardest_01\.png .*run dvc repro evaluate"):
        load_inputs(paths)


def test_title_names_the_networks_from_the_results_and_the_data_source(strided_report):
    _, html, markdown = strided_report
    expected = "petseg: strided vs unpool vs unet on synthetic pets-like scenes"
    assert f"<title>{expected} (offline demo data)</title>" in html
    assert markdown.startswith(f"# {expected}")
    assert "Oxford-IIIT Pet" not in html.split("</h1>")[0]
    assert title(["a", "b", "c", "d"], "oxford-iiit-pet") == (
        "petseg: a vs b vs c vs d on Oxford-IIIT Pet trimaps"
    )
    assert title(["unet", "unet_noskip"], "coco").endswith("on COCO-annotated images")
    assert "folder" in title(["unet"], "folder")


def test_training_curves_draw_the_validation_pixel_accuracy(tmp_path):
    inputs = load_inputs(write_outputs(tmp_path, STRIDED_WINS))
    curves = inputs.curves
    changed = {a: df.assign(val_pixel_acc=df["val_pixel_acc"] / 2) for a, df in curves.items()}
    assert curves_chart(changed) != curves_chart(curves)


def test_setup_reports_data_and_recipe(strided_report):
    _, html, markdown = strided_report
    setup = markdown_section(markdown, "Setup")
    assert "80 train, 14 val, 12 test" in setup
    assert "64×64 px" in setup and "3 epochs, batch 32" in setup
    assert "x86_64 CPU, 2 cores" in setup and "2 CPU threads" in setup
    assert "80 train, 14 val, 12 test" in html


def test_setup_names_each_architectures_block(strided_report):
    paths, _, markdown = strided_report
    default = "depth 4, base width 32, dropout 0, plain blocks"
    assert f"all architectures: {default}" in markdown_section(markdown, "Setup")
    models = ModelsParams.model_validate({"unet": {"block": "residual", "bottleneck": 4}})
    rows = dict(setup_rows(load_inputs(paths), **{**PARAMS, "models": models}))
    row = rows["Models"]
    assert f"strided: {default}" in row
    assert "unet: depth 4, base width 32, dropout 0, residual blocks with 4× bottleneck" in row


# ------------------------------------------------------------------------------ notebook
@pytest.fixture
def kernel(tmp_path_factory, monkeypatch) -> str:
    """A Jupyter kernel spec that runs this interpreter (so the kernel imports what the tests
    import, whatever other python3 kernels the machine has); returns its name."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "petseg tests",
        "language": "python",
    }
    (jupyter / "kernels/petseg-tests").mkdir(parents=True)
    (jupyter / "kernels/petseg-tests/kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return "petseg-tests"


def _outputs(nb) -> list[list[dict]]:
    return [[o.get("data") for o in c.outputs] for c in nb.cells if c.cell_type == "code"]


def test_notebook_runs_top_to_bottom_from_the_report_folder_and_the_root(tmp_path, kernel):
    import nbformat
    from nbclient import NotebookClient

    runs = [{"variant": "baseline", "arch": a, "seed": 0, "miou": 0.5} for a in STRIDED_WINS]
    paths = write_outputs(tmp_path, STRIDED_WINS, experiments=runs)  # every section has outputs
    build_report(paths, **PARAMS)
    stored = nbformat.read(paths.out / "report.ipynb", as_version=4)
    nbformat.validate(stored)
    assert any(o for o in _outputs(stored))  # it reads without running
    for cwd in (paths.out, tmp_path):
        nb = nbformat.read(paths.out / "report.ipynb", as_version=4)
        client = NotebookClient(
            nb, kernel_name=kernel, timeout=120, resources={"metadata": {"path": str(cwd)}}
        )
        client.execute()  # raises CellExecutionError on the first cell that fails
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert _outputs(nb) == _outputs(stored), cwd  # the same outputs, recomputed


def test_notebook_has_the_reports_sections_and_outputs(strided_report):
    import nbformat

    paths, _, markdown = strided_report
    raw = (paths.out / "report.ipynb").read_text(encoding="utf-8")
    nb = nbformat.reads(raw, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [line for line in markdown.splitlines() if line.startswith("#")]
    outputs = [o["data"] for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pngs = [d["image/png"] for d in outputs if "image/png" in d]
    assert len(pngs) == 5 + 2  # five charts, two prediction rows
    assert all(base64.b64decode(p).startswith(PNG_SIGNATURE) for p in pngs)
    tables = [d["text/html"] for d in outputs if "text/html" in d]
    metrics = next(t for t in tables if "Architecture" in t)
    _check_values(as_dicts([[c for c, _ in r] for r in Tables(metrics).tables["table"]]), paths)
    sentences = next(d["text/markdown"] for d in outputs if d.get("text/markdown", "")[:2] == "- ")
    assert sentences.splitlines() == [f"- {s}" for s in Tables(strided_report[1]).items]
    # Paths relative to the project, so the notebook runs wherever the project is.
    assert str(paths.out.parent) not in raw
    build_report(paths, **PARAMS)
    assert (paths.out / "report.ipynb").read_text(encoding="utf-8") == raw  # byte-identical


# ------------------------------------------------------------------------ regularization
def test_no_experiments_says_so(strided_report):
    _, html, markdown = strided_report
    for text in (html, markdown):
        assert "No regularization experiments were run" in text
    assert "regularization" not in Tables(html).tables


def test_experiments_table_has_mean_and_std(tmp_path):
    runs = [{"variant": "dropout", "arch": "unet", "seed": s, "miou": m}
            for s, m in enumerate((0.70, 0.72, 0.74))]  # fmt: skip
    runs.append({"variant": "baseline", "arch": "strided", "seed": 0, "miou": 0.65})
    paths = write_outputs(tmp_path, STRIDED_WINS, experiments=runs)
    html = build_report(paths, **PARAMS).read_text(encoding="utf-8")
    rows = Tables(html).tables["regularization"]
    assert [t for t, _ in rows[0]][:3] == ["Variant", "Architecture", "mIoU"]
    assert [[t for t, _ in r] for r in rows[1:]] == [
        ["dropout", "unet", "0.7200 ± 0.0200", "3"],
        ["baseline", "strided", "0.6500", "1"],
    ]
    markdown = (paths.out / "README.md").read_text()
    assert "| dropout | unet | 0.7200 ± 0.0200 | 3 |" in markdown
    assert "No regularization experiments" not in markdown


def test_experiments_chart_follows_the_table_and_a_header_only_csv_means_none(tmp_path):
    runs = [
        {"variant": v, "arch": a, "seed": seed, "miou": 0.5 + 0.01 * seed}
        for v in ("baseline", "dropout")
        for a in ("strided", "unet")
        for seed in (0, 1)
    ]
    paths = write_outputs(tmp_path / "runs", STRIDED_WINS, experiments=runs)
    html = build_report(paths, **PARAMS).read_text(encoding="utf-8")
    section = html[html.index("<h2>Regularization</h2>") :]
    assert section.index('<table class="regularization">') < section.index(
        '<figure id="regularization"><img src="data:image/png;base64,'
    )
    Image.open(paths.out / "figures/regularization.png").verify()
    markdown = (paths.out / "README.md").read_text()
    assert "![Regularization variants](figures/regularization.png)" in markdown_section(
        markdown, "Regularization"
    )

    paths = write_outputs(tmp_path / "none", STRIDED_WINS)
    paths.experiments.write_text("experiment,variant,arch,seed,miou\n")  # as committed
    html = build_report(paths, **PARAMS).read_text(encoding="utf-8")
    assert "No regularization experiments were run" in html and "regularization.png" not in html
    assert not (paths.out / "figures/regularization.png").exists()


def test_experiments_without_required_columns_is_an_error(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS, experiments=[{"variant": "x", "score": 1.0}])
    with pytest.raises(DataError, match=r"experiments\.csv lacks the columns arch, miou"):
        build_report(paths, **PARAMS)


# ---------------------------------------------------------------------------------- stage
def _stage(paths: ReportPaths, params: Path) -> subprocess.CompletedProcess:
    args = {
        "--params": params, "--summary": paths.summary, "--test-metrics": paths.test_metrics,
        "--train-metrics": paths.train_metrics, "--train-plots": paths.train_plots,
        "--eval-plots": paths.eval_plots, "--predictions": paths.predictions,
        "--manifest": paths.manifest, "--experiments": paths.experiments, "--out": paths.out,
    }  # fmt: skip
    cmd = [sys.executable, str(ROOT / "stages/report.py")]
    cmd += [str(x) for kv in args.items() for x in kv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_stage_writes_the_report_and_says_where(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    params = tmp_path / "params.yaml"
    params.write_text("data: {source: synthetic}\npreprocess: {image_size: 64}\n")
    proc = _stage(paths, params)
    assert proc.returncode == 0, proc.stderr
    assert str(paths.out / "index.html") in proc.stdout
    assert (paths.out / "README.md").is_file()
    assert sorted(p.name for p in paths.out.iterdir()) == [
        "README.md", "figures", "index.html", "report.ipynb",
    ]  # fmt: skip


def test_stage_missing_input_exits_2_naming_the_file(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    (paths.test_metrics / "unpool.json").unlink()
    params = tmp_path / "params.yaml"
    params.write_text("data: {source: synthetic}\n")
    proc = _stage(paths, params)
    assert proc.returncode == 2
    assert "unpool.json" in proc.stderr and "run dvc repro evaluate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not paths.out.exists()


def test_a_summary_in_the_flat_schema_is_an_error_naming_the_file_and_key(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    summary = json.loads(paths.summary.read_text())
    row = summary["architectures"]["unet"]
    row.update({f"iou_{c}": v for c, v in row.pop("iou").items()})
    paths.summary.write_text(json.dumps(summary))
    with pytest.raises(DataError) as err:
        load_inputs(paths)
    message = str(err.value)
    assert str(paths.summary) in message and "run dvc repro evaluate" in message
    assert "architectures.unet.iou missing" in message
    assert "architectures.unet.iou_border not expected" in message


def test_bootstrap_intervals_from_evaluate_back_each_comparison():
    # unet 0.7933, strided 0.6933, unpool 0.6767
    intervals = Intervals.model_validate(
        {
            "level": 0.95,
            "resamples": 2000,
            "over": "82 test images",
            "miou": {a: {"low": 0.6, "high": 0.8} for a in UNET_WINS},
            "diff": {  # stored as "a-b" in architecture order; the report flips them as needed
                "strided-unpool": {
                    "miou": {"low": -0.01, "high": 0.045},
                    "iou": {"border": {"low": 0.005, "high": 0.035}},
                },
                "strided-unet": {
                    "miou": {"low": -0.13, "high": -0.07},
                    "iou": {"border": {"low": -0.2, "high": -0.1}},
                },
                "unpool-unet": {
                    "miou": {"low": -0.15, "high": -0.08},
                    "iou": {"border": {"low": -0.22, "high": -0.12}},
                },
            },
        }
    )
    summary = summary_of(UNET_WINS, intervals)
    facts = discussion(summary, counts=COUNTS, data_source="folder", seed=0)
    interval = "95% interval {} to {} points over resampled test images"
    # the ranking: the interval of unet's lead over the runner-up, strided
    assert f"runner-up strided (0.6933; {interval.format('+7.00', '+13.00')})" in facts[0]
    assert "includes no difference" not in facts[0]
    skips = [s for s in facts if s.startswith("Skip connections")]
    assert interval.format("+7.00", "+13.00") in skips[0]
    assert interval.format("+10.00", "+20.00") in skips[1]
    resampling = next(s for s in facts if s.startswith("Pooling indices"))
    assert interval.format("-4.50", "+1.00") + ", which includes no difference" in resampling
    assert interval.format("-3.50", "-0.50") + ")" in resampling  # border: unpool - strided
    caveat = next(s for s in facts if s.startswith("Caveats"))
    assert "paired bootstrap: 2000 resamples of the 82 test images" in caveat
    assert "second training seed" in caveat and "differences below about" not in caveat
    assert "noise of a single seed" not in " ".join(facts)


# ------------------------------------------------- the ablation, failures, ties, step costs
def _collapsed(share_bg: float = 0.995) -> dict:
    """A network that predicts (almost) only background."""
    r = numbers(0.0, 0.55, 0.0)
    n = 1000
    bg = round(share_bg * n)
    r["confusion"] = [[0, 300, 0], [0, 550, 0], [0, bg - 850, n - bg]]
    return r


WITH_ABLATION = {
    "strided": numbers(0.80, 0.88, 0.40),
    "unpool": numbers(0.81, 0.88, 0.42),
    "unet": dict(numbers(0.86, 0.92, 0.52), boundary_iou=0.70),
    "unet_noskip": dict(numbers(0.84, 0.91, 0.41), boundary_iou=0.55),
}


def _ablation_intervals(low: float, high: float) -> Intervals:
    pairs = {}
    archs = list(WITH_ABLATION)
    for i, a in enumerate(archs):
        for b in archs[i + 1 :]:
            iv = {"low": low, "high": high}
            pairs[f"{a}-{b}"] = {"miou": iv, "iou": {"border": iv}, "boundary_iou": iv}
    return Intervals.model_validate(
        {"level": 0.95, "resamples": 100, "over": "12 test images",
         "miou": {a: {"low": 0.5, "high": 0.9} for a in archs}, "diff": pairs}
    )  # fmt: skip


def test_skips_are_judged_against_the_ablation_with_what_it_controls():
    facts = discussion(
        summary_of(WITH_ABLATION, _ablation_intervals(0.01, 0.2)),
        counts=COUNTS, data_source="folder",
    )  # fmt: skip
    skips = [f for f in facts if f.startswith("Skip connections")]
    assert len(skips) == 1 and skips[0].startswith(
        "Skip connections helped: unet against unet_noskip"
    )
    assert "Boundary IoU 0.7000 vs 0.5500 (+15.00 points" in skips[0]
    text = " ".join(facts)
    assert "same layers, parameters and FLOPs" in text
    assert "Where they act: the change is largest at outlines" in text
    assert "border IoU +11.00 points" in text and "pet IoU +2.00 points" in text


def test_an_interval_containing_zero_is_a_tie_not_a_win():
    facts = discussion(
        summary_of(WITH_ABLATION, _ablation_intervals(-0.02, 0.2)),
        counts=COUNTS, data_source="folder",
    )  # fmt: skip
    text = " ".join(facts)
    assert "Skip connections made no measurable difference" in text
    assert "helped" not in text and " beats " not in text
    assert "unpool (unpooling with the pooling indices) is level with strided" in text
    assert "includes no difference" in text


def test_a_collapsed_network_is_named_and_supports_no_claim():
    results = dict(WITH_ABLATION, strided=_collapsed())
    facts = discussion(summary_of(results), counts=COUNTS, data_source="folder")
    assert facts[0].startswith("strided predicts almost only background (99.5% of the test pixels)")
    text = " ".join(facts)
    assert "Pooling indices vs learned upsampling cannot be judged here: strided collapsed" in text
    assert " beats " not in text and " trails " not in text


def test_a_class_nobody_learns_and_ties_at_the_bottom_are_said_plainly():
    results = {a: numbers(0.0, 0.6 + i / 100, 0.0) for i, a in enumerate(("strided", "unet"))}
    text = " ".join(discussion(summary_of(results), counts=COUNTS, data_source="folder"))
    assert "No network has learned the pet class (best IoU 0.0000)" in text
    assert "No network has learned the border class" in text
    assert "Pet and border tie as the lowest-scoring classes for every architecture" in text
    assert "-0.00" not in text


def test_best_epoch_at_the_last_epoch_says_training_was_still_improving():
    results = dict(WITH_ABLATION, unet=dict(WITH_ABLATION["unet"], best_epoch=5))
    text = " ".join(discussion(summary_of(results), counts=COUNTS, data_source="folder"))
    assert "unet was still improving: the best validation epoch is the last one (5)" in text
    assert "still improving" not in " ".join(
        discussion(summary_of(WITH_ABLATION), counts=COUNTS, data_source="folder")
    )


def test_no_negative_zero_in_intervals_or_differences():
    iv = _ablation_intervals(-0.00001, 0.00002)
    text = " ".join(discussion(summary_of(WITH_ABLATION, iv), counts=COUNTS, data_source="folder"))
    assert "-0.00" not in text and "interval 0.00 to 0.00 points" in text


def _timing(ratio: float, low: float, high: float, ms: float) -> dict:
    return {"ms": ms, "ratio": ratio, "ratio_low": low, "ratio_high": high}


def test_cost_is_ranked_by_interleaved_ratios_and_noise_is_a_tie():
    from petseg.results import CostSetup, StepCost

    ratios = {"strided": (1.0, 1.0, 1.0), "unpool": (1.03, 0.97, 1.08), "unet": (1.3, 1.25, 1.36),
              "unet_noskip": (1.29, 1.24, 1.35)}  # fmt: skip
    records = records_of(WITH_ABLATION)
    for a, (r, lo, hi) in ratios.items():
        step = StepCost(
            train_step=_timing(r, lo, hi, 10 * r), inference_batch=_timing(r, lo, hi, r)
        )
        records[a] = records[a].model_copy(update={"cost": step})
    ref = {"train_step": "strided", "inference_batch": "strided"}
    setup = CostSetup(batch=8, image_size=64, rounds=10, threads=2, device="cpu", reference=ref)
    facts = discussion(Summary.of(records, None, setup), counts=COUNTS, data_source="folder")
    text = " ".join(facts)
    assert (
        "Per training step (8 images at 64 px, 10 interleaved rounds): strided is the fastest"
        in text
    )
    assert "unpool within noise of it" in text
    assert "unet 1.30× (quartiles 1.25–1.36)" in text
    assert "unet, the most accurate, costs 1.30× the training step of strided" in text
    assert "equally fast" not in text  # wall clocks no longer rank the networks


# ------------------------------------------------------------------------------ across seeds
def _seed_frames(diffs_by_seed: dict[int, float], half_width: float = 0.01):
    import pandas as pd

    seeds = pd.DataFrame(
        [{"experiment": f"cmp-s{s}", "seed": s, "arch": a, "miou": 0.7 + (a == "unet") * d,
          "iou.border": 0.4, "boundary_iou": 0.5}
         for s, d in diffs_by_seed.items() for a in ("unet", "unet_noskip")]
    )  # fmt: skip
    diffs = pd.DataFrame(
        [{"experiment": f"cmp-s{s}", "seed": s, "a": "unet", "b": "unet_noskip", "metric": "miou",
          "diff": d, "low": d - half_width, "high": d + half_width}
         for s, d in diffs_by_seed.items()]
    )  # fmt: skip
    return seeds, diffs


def test_seed_verdict_combines_seed_spread_and_test_resampling():
    from petseg.report.seeds import combine

    _, diffs = _seed_frames({0: 0.03, 1: 0.05, 2: 0.04}, half_width=0.0196)
    v = combine(diffs, "unet", "unet_noskip", "miou")
    # mean 0.04; seed term var(0.03, 0.05, 0.04) / 3 = 1e-4 / 3; bootstrap term (0.01)^2 = 1e-4
    se = (1e-4 / 3 + 1e-4) ** 0.5
    assert v.n == 3 and v.agree and v.real
    assert (v.low, v.high) == pytest.approx((0.04 - 1.96 * se, 0.04 + 1.96 * se))
    flipped = combine(diffs, "unet_noskip", "unet", "miou")
    assert flipped.mean == pytest.approx(-0.04) and flipped.high == pytest.approx(-v.low)


def test_seeds_that_disagree_are_no_claim_even_with_a_large_mean():
    from petseg.report.seeds import combine, seed_sentences

    seeds, diffs = _seed_frames({0: 0.12, 1: -0.01}, half_width=0.001)
    assert not combine(diffs, "unet", "unet_noskip", "miou").real
    text = " ".join(seed_sentences(seeds, diffs))
    assert "Across 2 training seeds (0, 1)" in text
    assert "Do skip connections matter? Across seeds they make no difference" in text
    assert "seeds disagree" in text


def test_report_has_an_across_seeds_section_when_make_compare_ran(tmp_path, strided_report):
    paths, html_text, markdown = strided_report
    assert "This report rests on one training seed" in markdown  # no make compare yet
    seeds, diffs = _seed_frames({0: 0.03, 1: 0.05})
    seeds["arch"] = seeds["arch"].replace({"unet_noskip": "strided"})
    seeds.to_csv(tmp_path / "seeds.csv", index=False)
    diffs.to_csv(tmp_path / "seed_diffs.csv", index=False)
    out = tmp_path / "report"
    build_report(
        dataclasses.replace(paths, out=out, seeds=tmp_path / "seeds.csv",
                            seed_diffs=tmp_path / "seed_diffs.csv"),
        **PARAMS,
    )  # fmt: skip
    md = (out / "README.md").read_text()
    section = markdown_section(md, "Across seeds")
    assert "| unet | 0.7400 ± 0.0141 |" in section and "Across 2 training seeds" in section
    assert "Across seeds" in (out / "index.html").read_text()


def test_identical_networks_across_seeds_are_a_tie_not_a_disagreement():
    from petseg.report.seeds import combine, seed_sentences

    seeds, diffs = _seed_frames({0: 0.0, 1: 0.0}, half_width=0.0)
    v = combine(diffs, "unet", "unet_noskip", "miou")
    assert v.agree and not v.real and (v.low, v.high) == (0.0, 0.0)
    text = " ".join(seed_sentences(seeds, diffs))
    assert "make no difference these seeds can show" in text and "disagree" not in text


def test_collapsed_networks_are_left_out_of_the_ranking():
    one = dict(WITH_ABLATION, strided=_collapsed())
    text = " ".join(discussion(summary_of(one), counts=COUNTS, data_source="folder"))
    assert "unet is the best architecture on test mIoU" in text
    assert "worst, strided" not in text  # a collapsed network is not "the worst": it is broken
    everything = {a: _collapsed() for a in WITH_ABLATION}
    facts = discussion(summary_of(everything), counts=COUNTS, data_source="folder")
    text = " ".join(facts)
    assert "No ranking: strided, unpool, unet and unet_noskip collapsed to one class" in text
    assert "is the best architecture" not in text and "the most accurate" not in text


# ---------------------------------------------------------------------- from scratch vs pretrained
def _transfer_row(arch, encoder, pretrained, seed, miou, *, seconds=100.0, params=2_000_000):
    """One row of plots/transfer.csv (make transfer), 5 epochs."""
    return {"experiment": f"tl-{encoder}-s{seed}", "arch": arch, "encoder": encoder,
            "pretrained": pretrained, "seed": seed, "epochs": 5, "params": params,
            "gflops_per_image": 1.5, "train_seconds": seconds, "miou": miou,
            "binary_pet_iou": miou + 0.1, "iou_border": miou - 0.3,
            "boundary_iou": miou - 0.2}  # fmt: skip


def test_no_backbone_anywhere_leaves_the_section_out(strided_report):
    _, html, markdown = strided_report
    for text in (html, markdown):
        assert "From scratch vs pretrained" not in text
    assert "transfer" not in Tables(html).tables


def test_transfer_experiments_are_set_side_by_side_with_cost_and_scores(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    rows = [
        _transfer_row("unet", "scratch", False, 0, 0.60, params=1_000_000),
        _transfer_row("unet", "resnet34", True, 0, 0.80, seconds=200.0, params=24_000_000),
        _transfer_row("unet", "resnet34", True, 1, 0.84, seconds=300.0, params=24_000_000),
        _transfer_row("unet", "resnet34", False, 0, 0.62, seconds=200.0, params=24_000_000),
    ]
    transfer = tmp_path / "plots/transfer.csv"
    R.write_csv(transfer, R.TRANSFER_COLUMNS, rows)
    paths = dataclasses.replace(paths, transfer=transfer)
    html = build_report(paths, **PARAMS).read_text(encoding="utf-8")
    table = [[c for c, _ in r] for r in Tables(html).tables["transfer"]]
    assert table[0][:5] == ["From", "Network", "Encoder", "Weights", "Runs"]
    assert table[1:] == [
        ["make transfer", "unet", "scratch", "random (own encoder)", "1", "1.00", "1.500", "100",
         "20.00", "0.6000", "0.7000", "0.3000", "0.4000"],
        ["make transfer", "unet", "resnet34", "ImageNet", "2", "24.00", "1.500", "250", "50.00",
         "0.8200", "0.9200", "0.5200", "0.6200"],
        ["make transfer", "unet", "resnet34", "random", "1", "24.00", "1.500", "200", "40.00",
         "0.6200", "0.7200", "0.3200", "0.4200"],
    ]  # fmt: skip
    findings = [s for s in Tables(html).items if s.startswith("unet on resnet34")]
    assert findings[0].startswith(
        "unet on resnet34 (make transfer): ImageNet weights vs random ones: mIoU 0.8200 vs "
        "0.6200 (+20.00 points), binary pet IoU 0.9200 vs 0.7200 (+20.00 points); 24.00 M vs "
        "24.00 M parameters"
    )
    assert (
        "ImageNet weights vs its own encoder: mIoU 0.8200 vs 0.6000 (+22.00 points)"
        in (findings[1])
    )
    markdown = markdown_section((paths.out / "README.md").read_text(), "From scratch vs pretrained")
    assert "| make transfer | unet | resnet34 | ImageNet | 2 | 24.00 |" in markdown
    assert "No network here started from pretrained weights" not in markdown
    nb = (paths.out / "report.ipynb").read_text(encoding="utf-8")
    assert "## From scratch vs pretrained" in nb and "show(report.transfer" in nb


def test_a_backbone_in_this_reports_own_networks_brings_the_section(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    models = ModelsParams.model_validate({"unet": {"encoder": "resnet18"}})
    html = build_report(paths, **{**PARAMS, "models": models}).read_text(encoding="utf-8")
    table = [[c for c, _ in r] for r in Tables(html).tables["transfer"]]
    assert [r[:4] for r in table[1:]] == [
        ["dvc repro", "strided", "scratch", "random (own encoder)"],
        ["dvc repro", "unpool", "scratch", "random (own encoder)"],
        ["dvc repro", "unet", "resnet18", "random"],
    ]
    assert table[3][9] == f"{STRIDED_WINS['unet']['miou']:.4f}"
    items = Tables(html).items
    assert any(s.startswith("No network here started from pretrained weights") for s in items)
    setup = as_dicts([["k", "v"], *([c for c, _ in r] for r in Tables(html).tables["setup"])])
    assert (
        "unet: depth 4, base width 32, dropout 0, plain blocks, encoder resnet18 (random "
        in (setup["Models"]["v"])
    )


def test_transfer_csv_without_required_columns_is_an_error(tmp_path):
    paths = write_outputs(tmp_path, STRIDED_WINS)
    transfer = tmp_path / "plots/transfer.csv"
    transfer.write_text("experiment,arch,miou\ntl-x,unet,0.5\n")
    with pytest.raises(DataError, match=r"transfer\.csv lacks the columns encoder, pretrained"):
        build_report(dataclasses.replace(paths, transfer=transfer), **PARAMS)
    transfer.write_text(",".join(R.TRANSFER_COLUMNS) + "\n")  # as committed: no section
    html = build_report(dataclasses.replace(paths, transfer=transfer), **PARAMS).read_text()
    assert "From scratch vs pretrained" not in html

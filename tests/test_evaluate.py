"""The evaluate stage's pure parts: prediction grids with error maps, per-image confusion
matrices and the paired bootstrap intervals behind the report's comparisons."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch
from PIL import Image

from petseg import ERROR_COLOUR, NUM_CLASSES, PALETTE
from petseg.data.prepared import PreparedSplit
from petseg.evaluate.cost import _round_robin, _timings, time_steps
from petseg.evaluate.grids import (
    SEP,
    choose_examples,
    error_map,
    example_rows,
    grid_row,
    labelled,
    write_grids,
)
from petseg.evaluate.scores import (
    bootstrap_intervals,
    boundary_counts,
    boundary_iou,
    boundary_width,
    per_image_confusion,
    per_image_miou,
)
from petseg.metrics import confusion_matrix, mean_iou


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    truth = rng.integers(0, 3, (6, 5), dtype=np.uint8)
    pred = truth.copy()
    pred[0, :3] = (truth[0, :3] + 1) % 3  # three wrong pixels
    return image, truth, pred


def test_error_map_marks_exactly_the_wrong_pixels():
    image, truth, pred = _case()
    out = error_map(image, truth, pred)
    red = np.all(out == ERROR_COLOUR, axis=-1)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(red, pred != truth)
    right = out[~red]
    assert np.all(right[:, 0] == right[:, 1]) and np.all(right[:, 1] == right[:, 2])  # grey
    assert right.max() < 160  # dimmed, so the red stands out
    assert not np.all(error_map(image, truth, truth) == ERROR_COLOUR, axis=-1).any()


def test_grid_row_has_predictions_above_their_error_maps():
    image, truth, pred = _case()
    h, w = truth.shape
    row = np.asarray(grid_row(image, truth, [truth, pred], scale=2))
    tiles = 4  # input, truth, two predictions; 2-px white separators between them
    assert row.shape == (2 * (2 * h + 2), 2 * (tiles * w + (tiles - 1) * 2), 3)
    small = row[::2, ::2]  # undo the nearest-neighbour upscaling
    col = [i * (w + 2) for i in range(tiles)]
    top, bottom = small[:h], small[h + 2 :]
    assert np.array_equal(top[:, col[0] : col[0] + w], image)
    assert np.array_equal(top[:, col[3] : col[3] + w], np.array(PALETTE, np.uint8)[pred])
    assert np.all(bottom[:, : col[1] + w] == 255)  # nothing under input and truth
    assert np.array_equal(bottom[:, col[2] : col[2] + w], error_map(image, truth, truth))
    assert np.array_equal(bottom[:, col[3] : col[3] + w], error_map(image, truth, pred))


def test_fixed_examples_do_not_depend_on_the_scores_and_the_hardest_do():
    n_test = 20
    good = {"a": np.linspace(0.9, 0.5, n_test), "b": np.full(n_test, 0.7)}
    bad = {"a": np.roll(good["a"], 7), "b": np.full(n_test, 0.1)}
    first, second = choose_examples(good, 5), choose_examples(bad, 5)
    fixed = [ex for ex in first if ex.kind == "fixed"]
    assert [(ex.rank, ex.index) for ex in fixed] == [(1, 0), (2, 10), (3, 19)]  # evenly spaced
    assert [ex for ex in second if ex.kind == "fixed"] == fixed  # another run, the same images
    assert [ex.file for ex in first] == [
        "fixed_01.png", "fixed_02.png", "fixed_03.png", "hardest_01.png", "hardest_02.png",
    ]  # fmt: skip
    assert [ex.index for ex in first if ex.kind == "hardest"] == [19, 18]  # lowest mean first
    assert [ex.index for ex in second if ex.kind == "hardest"] == [6, 5]
    assert choose_examples({"a": np.array([0.5, np.nan, 0.2])}, 9)[-1].index == 2  # NaN last
    rows = example_rows(first[:1], [f"img_{i}" for i in range(n_test)])
    assert rows == [{"file": "fixed_01.png", "kind": "fixed", "rank": 1, "image": "img_0"}]


def _ink(pixels: np.ndarray) -> bool:
    return bool((pixels.min(axis=-1) < 128).any())


def test_labelled_grid_names_the_row_and_every_column_over_its_own_tile():
    image, truth, pred = _case()
    scale, w = 12, truth.shape[1]  # tiles 60 px wide
    row = grid_row(image, truth, [truth, pred], scale)
    columns = [("input", ""), ("ground truth", ""), ("a", "mIoU 1.00"), ("b", "mIoU 0.50")]
    out = np.asarray(labelled(row, "fixed 1 of 2: img", columns, w * scale))
    head, step, tiles = out.shape[0] - row.height, (w + SEP) * scale, np.asarray(row)
    assert head > 0
    assert np.array_equal(out[head : head + row.height // 2], tiles[: row.height // 2])
    assert np.array_equal(out[head:, 2 * step :], tiles[:, 2 * step :])  # the error maps
    band = out[:head]
    assert _ink(band[: head // 3])  # the title line
    for k in range(len(columns)):
        assert _ink(band[head // 3 :, k * step : k * step + w * scale]), columns[k]
        gutter = band[head // 3 :, k * step + w * scale : (k + 1) * step]
        assert not _ink(gutter), f"label {columns[k]} runs past its tile"
    under_truth = out[head + row.height // 2 :, : 2 * w * scale]
    assert _ink(under_truth)  # the note on the error maps


def test_grid_files_have_stable_names_and_a_header(tmp_path):
    image, truth, pred = _case()
    split = PreparedSplit(
        images=np.stack([image] * 3), masks=np.stack([truth] * 3), names=["x", "y", "z"]
    )
    preds = {"a": np.stack([truth, pred, pred]), "b": np.stack([pred] * 3)}
    scores = {"a": np.array([1.0, 0.5, 0.5]), "b": np.array([0.5, 0.5, 0.4])}
    examples = choose_examples(scores, 2)
    write_grids(tmp_path / "grids", split, preds, scores, examples, scale=4)
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == [
        "fixed_01.png",
        "hardest_01.png",
    ]
    png = Image.open(tmp_path / "grids/hardest_01.png")
    assert png.width == 4 * (4 * 5 + 3 * SEP) and png.height > 4 * (2 * 6 + SEP)
    frame = pd.DataFrame(example_rows(examples, split.names))
    assert frame.to_dict("records")[1] == {
        "file": "hardest_01.png", "kind": "hardest", "rank": 1, "image": "z",
    }  # fmt: skip


# ------------------------------------------------------------- per-image scores and bootstrap
def _predictions(seed: int, n: int = 40, accuracy: float = 0.8):
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 3, (n, 12, 10)).astype(np.uint8)
    noise = rng.integers(0, 3, masks.shape)
    pred = np.where(rng.random(masks.shape) < accuracy, masks, noise).astype(np.int64)
    return pred, masks


def test_per_image_confusion_sums_to_the_dataset_matrix_and_gives_each_images_miou():
    pred, masks = _predictions(0)
    masks[1] = 255  # an unlabelled image: skipped, like confusion_matrix skips it
    masks[2], pred[2] = 0, 0  # one class only: the other two are left out of its mean
    cms = per_image_confusion(pred, masks, chunk=7)  # chunks that do not divide the images
    whole = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(masks), NUM_CLASSES)
    assert cms.shape == (40, 3, 3)
    assert np.array_equal(cms.sum(0), whole.numpy())
    expected = [
        mean_iou(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), NUM_CLASSES))
        for p, t in zip(pred, masks, strict=True)
    ]
    got = per_image_miou(pred, masks)
    assert np.allclose(got, expected, equal_nan=True)
    assert np.isnan(got[1]) and got[2] == 1.0


def test_bootstrap_interval_separates_a_clearly_better_model_and_not_a_copy():
    pred_good, masks = _predictions(0, accuracy=0.9)
    pred_bad = np.where(np.random.default_rng(1).random(masks.shape) < 0.6, masks, 0)
    cms = {
        "unet": per_image_confusion(pred_good, masks),
        "strided": per_image_confusion(pred_bad, masks),
        "copy": per_image_confusion(pred_good, masks),
    }
    iv = bootstrap_intervals(cms, resamples=600, seed=3)
    assert iv.level == 0.95 and iv.resamples == 600 and iv.over == "40 test images"
    assert set(iv.diff) == {"unet-strided", "unet-copy", "strided-copy"}
    point = mean_iou(cms["unet"].sum(0)) - mean_iou(cms["strided"].sum(0))
    better = iv.difference("unet", "strided", "miou")
    assert 0 < better.low < point < better.high
    # Either order: the difference b - a is the negated interval of a - b.
    worse = iv.difference("strided", "unet", "miou")
    assert (worse.low, worse.high) == (-better.high, -better.low)
    assert iv.difference("unet", "copy", "miou").model_dump() == {"low": 0.0, "high": 0.0}
    assert iv.difference("strided", "copy", "iou.border").high < 0
    assert iv.difference("copy", "strided", "iou.border").low > 0
    assert iv.difference("unet", "strided", "iou.pet") is None  # not a compared metric
    for arch, cm in cms.items():
        whole = mean_iou(cm.sum(0))
        assert iv.miou[arch].low <= whole <= iv.miou[arch].high
    assert bootstrap_intervals(cms, resamples=600, seed=3) == iv  # deterministic for a seed
    assert bootstrap_intervals(cms, resamples=600, seed=4) != iv


# ------------------------------------------------------------------------------ Boundary IoU
def _square(top: int, left: int, side: int, size: int = 10) -> np.ndarray:
    mask = np.ones((size, size), dtype=np.uint8)  # background
    mask[top : top + side, left : left + side] = 0  # pet
    return mask


def _biou(pred: np.ndarray, truth: np.ndarray) -> float:
    return boundary_iou(boundary_counts(pred[None], truth[None]).sum(0))


def test_boundary_iou_on_hand_counted_masks():
    truth = _square(2, 2, 6)  # 6x6 pet; at 10x10 the band is 1 px: a ring of 36 - 16 = 20
    assert boundary_width(10, 10) == 1 and boundary_width(128, 128) == 4
    assert boundary_counts(truth[None], truth[None]).tolist() == [[20, 20]]
    assert _biou(np.ones_like(truth), truth) == 0.0  # nothing predicted: 0 / 20
    blob = truth.copy()
    blob[0:2, 8:10] = 0  # a 2x2 blob in the corner: all 4 pixels are band
    assert boundary_counts(blob[None], truth[None]).tolist() == [[20, 24]]
    # One pixel too small all round: region IoU 16/36, but no outline pixel is right.
    shrunk = _square(3, 3, 4)
    assert boundary_counts(shrunk[None], truth[None]).tolist() == [[0, 32]]
    # A mask that fills the image has its contour at the image edge (zero padding).
    full = np.zeros((10, 10), dtype=np.uint8)
    assert boundary_counts(full[None], full[None]).tolist() == [[36, 36]]
    empty = np.ones((10, 10), dtype=np.uint8)
    assert np.isnan(_biou(empty, empty))  # no pet in either: undefined, not perfect


def test_bootstrap_covers_boundary_iou_when_counts_are_given():
    pred_good, masks = _predictions(0, accuracy=0.9)
    pred_bad = np.where(np.random.default_rng(1).random(masks.shape) < 0.6, masks, 1)
    cms = {
        "unet": per_image_confusion(pred_good, masks),
        "strided": per_image_confusion(pred_bad, masks),
    }
    bands = {"unet": boundary_counts(pred_good, masks), "strided": boundary_counts(pred_bad, masks)}
    iv = bootstrap_intervals(cms, resamples=300, seed=0, boundary=bands)
    point = _biou_sum(bands["unet"]) - _biou_sum(bands["strided"])
    diff = iv.difference("unet", "strided", "boundary_iou")
    assert diff.low < point < diff.high and diff.low > 0
    without = bootstrap_intervals(cms, resamples=300, seed=0)
    assert without.difference("unet", "strided", "boundary_iou") is None
    # The other intervals do not depend on whether boundary counts were resampled too.
    assert without.difference("unet", "strided", "miou") == iv.difference("unet", "strided", "miou")


def _biou_sum(counts: np.ndarray) -> float:
    return boundary_iou(counts.sum(0))


# ----------------------------------------------------------------------------- step costs
def test_round_robin_rotates_the_order_and_times_every_step(monkeypatch):
    import petseg.evaluate.cost as cost

    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    monkeypatch.setattr(cost, "_repeats", lambda steps, device: 2)
    ms = _round_robin(steps, rounds=3, device=torch.device("cpu"))
    assert ms.shape == (3, 3) and (ms >= 0).all()
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    timed = calls[3::2]
    assert calls[3:] == [c for c in timed for _ in range(2)]  # two calls per timing
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_repeats_make_the_fastest_networks_timing_span_min_ms(monkeypatch):
    import petseg.evaluate.cost as cost

    clock = itertools.count(0.0, 2**-7)  # every call of the clock: 7.8125 ms later (exact)
    monkeypatch.setattr(cost.time, "perf_counter", lambda: next(clock))
    steps = {"a": lambda: None, "b": lambda: None}
    assert cost._repeats(steps, torch.device("cpu")) == 3  # 20 ms / 7.8125 ms, rounded up


def test_ratios_are_per_round_against_the_fastest_with_quartiles():
    # b is always twice a; round 2 is disturbed (everything 10x slower): ratios do not move.
    ms = np.array([[1.0, 2.0, 1.1], [10.0, 20.0, 9.0], [1.0, 2.0, 1.2], [1.0, 2.0, 1.0]])
    ref, t = _timings(ms, ["a", "b", "c"])
    assert ref == "a"
    assert t["a"].ratio == t["a"].ratio_low == t["a"].ratio_high == 1.0
    assert t["b"].ratio == t["b"].ratio_low == t["b"].ratio_high == 2.0
    assert t["c"].ratio_low < 1.0 < t["c"].ratio_high  # c and a: within noise
    assert t["b"].ms == 2.0  # the median, unmoved by the disturbed round


def test_time_steps_measures_every_network_in_one_process():
    from petseg.config import ModelsParams
    from petseg.models import build_model

    params = ModelsParams.model_validate(
        {a: {"depth": 2, "base_width": 4} for a in ("strided", "unet")}
    )
    models = {a: build_model(a, params) for a in ("strided", "unet")}
    costs, setup = time_steps(
        models, batch=2, image_size=16, rounds=3, device=torch.device("cpu"), bf16=False
    )
    assert set(costs) == {"strided", "unet"} and setup.rounds == 3 and setup.batch == 2
    for step in ("train_step", "inference_batch"):
        ref = setup.reference[step]
        assert getattr(costs[ref], step).ratio == 1.0
        assert all(getattr(c, step).ms > 0 for c in costs.values())

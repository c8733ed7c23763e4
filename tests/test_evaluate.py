"""The prediction grids of the evaluate stage: predictions and their error maps."""

from __future__ import annotations

import numpy as np

from petseg import ERROR_COLOUR, PALETTE
from petseg.evaluate import error_map, grid_row


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

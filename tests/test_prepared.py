"""The prepared format's row reader: what training reads instead of loading the arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petseg.data.prepared import RowReader
from petseg.errors import DataError


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (10, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    return tmp_path, images, masks


@pytest.mark.parametrize(
    "index", [[3, 1, 3, 9], np.array([0, 5]), slice(2, 7), slice(None, None, -3), [-1]]
)
def test_rows_equal_the_array(arrays, index):
    folder, images, masks = arrays
    for name, array in (("images.npy", images), ("masks.npy", masks)):
        reader = RowReader(folder / name)
        assert len(reader) == len(array) and reader.shape == array.shape
        got = reader[index]
        assert isinstance(got, np.ndarray) and np.array_equal(got, array[index])


def test_a_tensor_index_returns_a_tensor(arrays):
    folder, images, _ = arrays
    got = RowReader(folder / "images.npy")[torch.tensor([4, 2])]
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(images[[4, 2]]))


def test_out_of_range_and_damaged_files(arrays):
    folder, images, _ = arrays
    with pytest.raises(IndexError):
        RowReader(folder / "images.npy")[[10]]
    data = (folder / "images.npy").read_bytes()
    (folder / "cut.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match="truncated: rerun preprocess"):
        RowReader(folder / "cut.npy")
    np.save(folder / "fortran.npy", np.asfortranarray(images[:, :, :, 0]))
    with pytest.raises(DataError, match="C-order"):
        RowReader(folder / "fortran.npy")

"""Batched augmentation: shapes, determinism, image/mask consistency, colour jitter maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from petseg.config import AugmentParams
from petseg.data import augment
from petseg.data.augment import MEAN, STD, augment_batch, normalize, to_float

GEOMETRY = AugmentParams(hflip=True, scale=0.25, rotate=30.0, color=0.0)
FLIP_ONLY = AugmentParams(hflip=True, scale=0.0, rotate=0.0, color=0.0)
COLOR_ONLY = AugmentParams(hflip=False, scale=0.0, rotate=0.0, color=0.4)
CONFIGS = {"all": AugmentParams(), "geometry": GEOMETRY, "flip": FLIP_ONLY, "color": COLOR_ONLY}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_masks(n: int = 4, h: int = 32, w: int = 32, block: int = 8, seed: int = 0):
    """Labels 0..2 constant over block x block squares: wide regions with straight edges."""
    coarse = torch.randint(0, 3, (n, h // block, w // block), generator=gen(seed))
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def batch(n: int = 4, h: int = 32, w: int = 32, seed: int = 0):
    images = torch.rand(n, 3, h, w, generator=gen(seed))
    return images, block_masks(n, h, w, seed=seed)


def uniform_neighbourhood(masks: torch.Tensor, size: int = 5) -> torch.Tensor:
    """True where the size x size window around a pixel holds a single label."""
    m = masks.unsqueeze(1).float()
    pad = size // 2
    hi = F.max_pool2d(m, size, 1, pad)
    lo = -F.max_pool2d(-m, size, 1, pad)
    return (hi == lo).squeeze(1)


def test_to_float_layout_and_values():
    u8 = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=gen())
    x = to_float(u8)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, u8.permute(0, 3, 1, 2).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        to_float(u8.float())


def test_normalize_centres_the_imagenet_mean():
    x = torch.tensor(MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    x = x.contiguous(memory_format=torch.channels_last)
    assert normalize(x).abs().max() < 1e-6
    assert normalize(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        normalize(x + torch.tensor(STD).view(1, 3, 1, 1)), torch.ones_like(x)
    )


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shapes_dtypes_and_layout_preserved(config, mask_dtype, channels_last):
    images, masks = batch(h=32, w=48)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out_i, out_m = augment_batch(images, masks.to(mask_dtype), CONFIGS[config], gen())
    assert out_i.shape == images.shape and out_i.dtype == images.dtype
    assert out_m.shape == masks.shape and out_m.dtype == mask_dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out_i.is_contiguous(memory_format=fmt)


def test_disabled_returns_inputs_unchanged():
    images, masks = batch()
    g = gen()
    state = g.get_state()
    out_i, out_m = augment_batch(images, masks, AugmentParams(enabled=False), g)
    assert out_i is images and out_m is masks
    assert torch.equal(g.get_state(), state)  # nothing drawn


def test_hflip_only_mirrors_image_and_mask_together():
    images, masks = batch(n=16)
    out_i, out_m = augment_batch(images, masks, FLIP_ONLY, gen())
    flipped = []
    for i in range(len(images)):
        same = torch.equal(out_i[i], images[i]) and torch.equal(out_m[i], masks[i])
        mirror = torch.equal(out_i[i], images[i].flip(-1)) and torch.equal(
            out_m[i], masks[i].flip(-1)
        )
        assert same != mirror, f"sample {i}: image and mask must be flipped together"
        flipped.append(mirror)
    assert any(flipped) and not all(flipped)


def test_affine_flip_matches_the_cheap_flip_path():
    """With near-identity zoom the warp path must flip exactly where torch.flip does."""
    images, masks = batch(n=16)
    near_identity = AugmentParams(hflip=True, scale=1e-6, rotate=0.0, color=0.0)
    warped_i, warped_m = augment_batch(images, masks, near_identity, gen(3))
    flipped_i, flipped_m = augment_batch(images, masks, FLIP_ONLY, gen(3))
    torch.testing.assert_close(warped_i, flipped_i, atol=1e-4, rtol=0)
    assert torch.equal(warped_m, flipped_m)


def test_geometry_keeps_labels_and_pads_by_reflection():
    images, masks = batch(n=8)
    images = 0.5 + images / 2  # nothing darker than 0.5: zero padding would show as black
    masks = 1 + 2 * (masks % 2)  # labels {1, 3}: zero padding would add 0, blending 2
    strong = AugmentParams(hflip=True, scale=0.5, rotate=180.0, color=0.0)
    out_i, out_m = augment_batch(images, masks, strong, gen())
    assert set(out_m.unique().tolist()) <= {1, 3}
    assert out_i.min() >= 0.5 - 1e-6
    assert not torch.equal(out_m, masks)


def test_geometry_is_the_same_for_image_and_mask():
    _, masks = batch(n=8)
    images = torch.rand(8, 3, 32, 32, generator=gen(1))
    images[:, 0] = masks / 2  # channel 0 encodes the label: 0, 0.5, 1
    out_i, out_m = augment_batch(images, masks, GEOMETRY, gen())
    inside = uniform_neighbourhood(out_m)
    assert inside.float().mean() > 0.3  # enough pixels away from label edges to mean something
    err = (out_i[:, 0] - out_m / 2).abs()[inside]
    assert err.max() < 1e-4
    assert not torch.equal(out_m, masks)


def test_affine_matrix_is_a_similarity_in_pixel_space():
    """Non-square images: rotation and zoom must not shear (h/w factors in the matrix)."""
    h, w = 32, 80
    params = AugmentParams(hflip=True, scale=0.3, rotate=90.0)
    draws = augment._draw(16, params, gen())
    theta = augment._affine_theta(draws, h, w)
    to_pixels = torch.diag(torch.tensor([w, h], dtype=torch.float64))
    linear = to_pixels @ theta[:, :, :2] @ torch.linalg.inv(to_pixels)
    linear = linear * draws["zoom"].view(-1, 1, 1)
    gram = linear @ linear.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(2, dtype=torch.float64).expand_as(gram))
    # determinant -1 exactly where the sample is flipped
    torch.testing.assert_close(torch.linalg.det(linear), 1.0 - 2.0 * draws["flip"].double())


def test_zoom_in_shift_keeps_the_window_inside():
    params = AugmentParams(hflip=False, scale=0.5, rotate=0.0)
    draws = augment._draw(256, params, gen())
    theta = augment._affine_theta(draws, 32, 32)
    # corners of the output map to shift +- 1/zoom, which must stay in [-1, 1] when zoom >= 1
    reach = theta[:, :, 2].abs() + theta[:, :, :2].abs().sum(dim=2)
    zoom_in = draws["zoom"] >= 1
    assert (reach[zoom_in] <= 1 + 1e-9).all()
    assert (theta[~zoom_in, :, 2] == 0).all()
    assert (theta[zoom_in, :, 2] != 0).any()


@pytest.mark.parametrize("config", ["all", "geometry", "color", "flip"])
def test_same_seed_same_output_different_seed_different(config):
    images, masks = batch()
    params = CONFIGS[config]
    a_i, a_m = augment_batch(images, masks, params, gen(7))
    b_i, b_m = augment_batch(images, masks, params, gen(7))
    c_i, c_m = augment_batch(images, masks, params, gen(8))
    assert torch.equal(a_i, b_i) and torch.equal(a_m, b_m)
    assert not torch.equal(a_i, c_i)


def test_color_only_leaves_geometry_and_mask_alone():
    masks = block_masks(n=4)
    palette = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.5, 0.9], [0.5, 0.5, 0.5]])
    images = palette[masks].permute(0, 3, 1, 2).contiguous()
    out_i, out_m = augment_batch(
        images, masks, AugmentParams(hflip=False, scale=0.0, rotate=0.0, color=1.0), gen()
    )
    assert torch.equal(out_m, masks)
    assert out_i.min() >= 0 and out_i.max() <= 1
    assert not torch.allclose(out_i, images)
    # no pixel moved: within a sample, every pixel of one label still has one colour
    for n in range(len(masks)):
        for label in masks[n].unique():
            colours = out_i[n].permute(1, 2, 0)[masks[n] == label]
            assert (colours - colours[0]).abs().max() < 1e-6


def test_color_jitter_matches_torchvision_sequence():
    """The folded 3x3 matrix equals brightness -> contrast -> saturation when nothing clips."""
    images = 0.3 + 0.4 * torch.rand(4, 3, 16, 16, generator=gen())
    b, c, s = (torch.tensor([0.8, 1.2, 1.0, 0.9], dtype=torch.float64).roll(k) for k in range(3))
    out = augment._color_jitter(images, b, c, s)
    for n in range(len(images)):
        ref = TF.adjust_brightness(images[n], b[n].item())
        ref = TF.adjust_contrast(ref, c[n].item())
        ref = TF.adjust_saturation(ref, s[n].item())
        torch.testing.assert_close(out[n], ref, atol=1e-5, rtol=0)


def test_rejects_bad_inputs():
    images, masks = batch()
    with pytest.raises(ValueError, match="masks"):
        augment_batch(images, masks[:, :16], AugmentParams(), gen())
    with pytest.raises(ValueError, match="images"):
        augment_batch(images[:, :1], masks, AugmentParams(), gen())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    images, masks = batch(n=8)
    cpu_i, cpu_m = augment_batch(images, masks, AugmentParams(), gen(5))
    gpu_i, gpu_m = augment_batch(images.cuda(), masks.cuda(), AugmentParams(), gen(5))
    assert gpu_i.is_cuda and gpu_m.is_cuda
    torch.testing.assert_close(gpu_i.cpu(), cpu_i, atol=1e-4, rtol=0)
    assert (gpu_m.cpu() == cpu_m).float().mean() > 0.999  # nearest ties may round differently
    u8, m8 = u8_batch(n=8)
    cpu_x, cpu_y = augment.make_batch(u8, m8, AugmentParams(), gen(5))
    gpu_x, gpu_y = augment.make_batch(u8.cuda(), m8.cuda(), AugmentParams(), gen(5))
    assert gpu_x.is_cuda and gpu_x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gpu_x.cpu(), cpu_x, atol=1e-3, rtol=0)
    assert (gpu_y.cpu() == cpu_y).float().mean() > 0.999


# --------------------------------------------------------------------- the fused training feed
def u8_batch(n: int = 4, h: int = 32, w: int = 32, seed: int = 0):
    images = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=gen(seed))
    return images, block_masks(n, h, w, seed=seed).to(torch.uint8)


@pytest.mark.parametrize("name", [*CONFIGS, "disabled", "none"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_make_batch_equals_the_step_by_step_pipeline(name, channels_last):
    """make_batch == normalize(augment_batch(to_float(.))): same draws, same masks, same layout."""
    params = {"disabled": AugmentParams(enabled=False), "none": None}.get(name, CONFIGS.get(name))
    images, masks = u8_batch()
    x, y = augment.make_batch(images, masks, params, gen(7), channels_last)
    expected = to_float(images)
    expected_masks = masks.long()
    if params is not None:
        expected, expected_masks = augment_batch(expected, expected_masks, params, gen(7))
    torch.testing.assert_close(x, normalize(expected), atol=1e-5, rtol=0)
    assert torch.equal(y, expected_masks) and y.dtype == torch.int64
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=fmt)


def test_make_batch_clamps_colour_to_the_valid_range():
    """Strong jitter pushes values past [0, 1]: the normalised output stays within its image."""
    images, masks = u8_batch(n=16)
    x, _ = augment.make_batch(images, masks, AugmentParams(color=0.9), gen(1))
    lo = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    hi = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
    assert (x >= lo - 1e-6).all() and (x <= hi + 1e-6).all()
    assert (x <= lo + 1e-6).any() and (x >= hi - 1e-6).any()  # the clamp did act


def test_make_batch_rejects_bad_inputs():
    images, masks = u8_batch()
    with pytest.raises(ValueError, match="uint8"):
        augment.make_batch(images.float(), masks, None, None)
    with pytest.raises(ValueError, match="masks"):
        augment.make_batch(images, masks[:, :16], AugmentParams(), gen())


def test_on_device_keeps_host_arrays_on_a_cpu():
    import numpy as np

    from petseg.engine import on_device

    a, b = np.zeros((3, 4, 4, 3), np.uint8), np.zeros((3, 4, 4), np.uint8)
    out = on_device((a, b), torch.device("cpu"))
    assert out[0] is a and out[1] is b


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_device_copies_row_readers_to_the_gpu_and_feed_gathers_there(tmp_path):
    import numpy as np

    from petseg.data.prepared import RowReader
    from petseg.engine import Feed, on_device

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (7, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "i.npy", images)
    np.save(tmp_path / "m.npy", masks)
    dev = torch.device("cuda")
    gi, gm = on_device((RowReader(tmp_path / "i.npy"), RowReader(tmp_path / "m.npy")), dev, chunk=3)
    assert gi.is_cuda and torch.equal(gi.cpu(), torch.from_numpy(images))
    assert torch.equal(gm.cpu(), torch.from_numpy(masks))
    idx = torch.tensor([5, 0, 3])
    feed = Feed(dev, True)
    x_gpu, y_gpu = feed.batch(gi, gm, idx)
    x_cpu, y_cpu = Feed(torch.device("cpu"), True).batch(
        torch.from_numpy(images), torch.from_numpy(masks), idx
    )
    torch.testing.assert_close(x_gpu.cpu(), x_cpu)
    assert torch.equal(y_gpu.cpu(), y_cpu)

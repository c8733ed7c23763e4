"""Batched augmentation on tensors: one affine warp and one colour matrix per sample.

Training reads uint8 batches from the prepared arrays (:mod:`petseg.data.prepared`), turns them into
floats with :func:`to_float`, augments the whole batch at once with :func:`augment_batch` and
finally centres it with :func:`normalize`::

    x = normalize(augment_batch(to_float(images_u8), masks, params, generator)[0])

Training itself calls :func:`make_batch`, which computes exactly that in fewer passes over the
batch (colour, clamp and normalisation fused into one matrix product); the step-by-step functions
stay as the readable reference and are tested against it.

Why batched rather than per-sample PIL transforms: a per-sample pipeline pays Python and PIL
overhead per image and per transform; here every geometric part (flip, zoom, rotation, shift) is
folded into one 2x3 affine matrix per sample, so the whole batch is warped by a single
``grid_sample`` for the images and a single one for the masks, and colour jitter is a single
batched 3x3 matrix product. Augmenting a batch so costs a small fraction of the training step it
feeds (measured in benchmarks/RESULTS.md).

Randomness: every random number comes from the ``generator`` argument, which must be a CPU
``torch.Generator``; the same generator state gives the same output. The small per-sample
parameters are drawn on CPU and then moved to the batch's device, so a CUDA batch gets the same
draws as a CPU one (outputs then agree up to floating-point rounding). Each call
draws the same amount of random numbers whatever augmentations are switched on, so turning one
augmentation off does not change the draws of the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from petseg.config import AugmentParams

# ImageNet statistics. No pretrained weights are used anywhere in petseg: these constants only
# centre and scale the input to roughly zero mean / unit variance, which any natural-image
# statistics would do; the familiar values avoid inventing yet another set.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Luma weights used for the contrast mean and for desaturation; the same numbers as
# torchvision.transforms.functional.rgb_to_grayscale, so the jitter matches torchvision's.
GRAY = (0.2989, 0.587, 0.114)

# Columns of the per-sample uniform draws (see _draw).
_FLIP, _ZOOM, _ANGLE, _SHIFT_X, _SHIFT_Y, _BRIGHT, _CONTRAST, _SAT = range(8)


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1], in channels_last memory format.

    The permute is a view of the NHWC bytes, so the result is channels_last without a copy
    beyond the uint8 -> float conversion itself (channels_last is also what oneDNN/cuDNN
    convolutions prefer). Not normalised: augmentation works on [0, 1]; call :func:`normalize`
    afterwards.
    """
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images_u8.dtype} "
            f"{tuple(images_u8.shape)}"
        )
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Subtract :data:`MEAN` and divide by :data:`STD` per channel; (N, 3, H, W) in [0, 1].

    Keeps the memory format of ``images`` (elementwise with broadcast constants).
    """
    mean = images.new_tensor(MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    params: AugmentParams,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly augment a batch; image and mask of a sample get the same geometric transform.

    ``images``: float (N, 3, H, W) in [0, 1]; ``masks``: integer labels (N, H, W), any integer
    dtype. Returns tensors of the same shapes, dtypes, device and (for images) memory format.
    With ``params.enabled`` False the inputs are returned unchanged and nothing is drawn.

    - geometry (``hflip``, ``scale``, ``rotate``): flip with p = 0.5, zoom factor uniform in
      [1 - scale, 1 + scale] (> 1 zooms in), rotation uniform in +-rotate degrees, and, when
      zooming in, a shift uniform within the margin that keeps the zoomed window inside the image.
      One affine matrix per sample, one sampling grid for the batch, used for both images
      (bilinear) and masks (nearest, so labels stay labels). Only a flip -> ``torch.flip``;
      no geometry -> no resampling at all.
    - colour (``color``): brightness, contrast and saturation factors uniform in
      [1 - color, 1 + color] per sample, images only, clamped to [0, 1].
    """
    if not params.enabled:
        return images, masks
    _check(images, masks)
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    draws = _draw(images.shape[0], params, generator)
    fmt = (
        torch.channels_last
        if images.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )

    if params.scale > 0 or params.rotate > 0:
        theta = _affine_theta(draws, images.shape[-2], images.shape[-1])
        images, masks = _warp(images, masks, theta.to(images.device, images.dtype))
    elif params.hflip:
        flip = draws["flip"].to(images.device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)

    if params.color > 0:
        images = _color_jitter(images, draws["brightness"], draws["contrast"], draws["saturation"])
    return images.contiguous(memory_format=fmt), masks


def _check(images: torch.Tensor, masks: torch.Tensor) -> None:
    if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be float (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    n, _, h, w = images.shape
    _check_masks(masks, n, h, w)


def _check_masks(masks: torch.Tensor, n: int, h: int, w: int) -> None:
    if masks.shape != (n, h, w) or masks.is_floating_point():
        raise ValueError(
            f"masks must be integer labels of shape {(n, h, w)}, got {masks.dtype} "
            f"{tuple(masks.shape)}"
        )


def _draw(n: int, params: AugmentParams, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample parameters, on CPU in float64. Always consumes n x 8 uniforms (see module doc)."""
    u = torch.rand(n, 8, generator=generator, dtype=torch.float64)

    def sym(col: int, amount: float) -> torch.Tensor:  # uniform in [-amount, amount]
        return (2.0 * u[:, col] - 1.0) * amount

    zoom = 1.0 + sym(_ZOOM, params.scale)
    # Zooming in by z shows a window of half-width 1/z (in [-1, 1] coordinates): it may move by
    # up to 1 - 1/z and still stay inside the image. Zooming out leaves no margin: no shift.
    margin = (1.0 - 1.0 / zoom).clamp(min=0.0)
    return {
        "flip": (u[:, _FLIP] < 0.5) & params.hflip,
        "zoom": zoom,
        "angle": torch.deg2rad(sym(_ANGLE, params.rotate)),
        "shift": torch.stack([sym(_SHIFT_X, 1.0), sym(_SHIFT_Y, 1.0)], dim=1) * margin[:, None],
        "brightness": 1.0 + sym(_BRIGHT, params.color),
        "contrast": 1.0 + sym(_CONTRAST, params.color),
        "saturation": 1.0 + sym(_SAT, params.color),
    }


def _affine_theta(draws: dict[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
    """(N, 2, 3) matrices for ``affine_grid``: output coords -> input coords, in [-1, 1] units.

    input = shift + (1 / zoom) * R @ Flip @ output, where R rotates in pixel space: x and y are
    normalised by different lengths when h != w, hence the h/w factors (no shear on non-square
    images).
    """
    cos, sin = torch.cos(draws["angle"]), torch.sin(draws["angle"])
    flip = 1.0 - 2.0 * draws["flip"].double()
    inv = 1.0 / draws["zoom"]
    theta = torch.empty(len(inv), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = inv * flip * cos
    theta[:, 0, 1] = -inv * sin * (h / w)
    theta[:, 1, 0] = inv * flip * sin * (w / h)
    theta[:, 1, 1] = inv * cos
    theta[:, :, 2] = draws["shift"]
    return theta


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)``, computed separably.

    Each grid coordinate is ``a * x + b * y + c``: a row term plus a column term per sample,
    broadcast-added straight into the output; cheaper on CPU than affine_grid's (N, h*w, 3) x
    (3, 2) batched product, which multiplies by the constant 1 and builds the (N, h*w, 3) base
    grid first (equal up to float rounding).
    """
    kw = {"dtype": theta.dtype, "device": theta.device}
    xs = (torch.arange(w, **kw) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, **kw) * 2 + 1) / h - 1
    grid = torch.empty(theta.shape[0], h, w, 2, **kw)
    for k in range(2):
        rows = theta[:, k, 1, None] * ys + theta[:, k, 2, None]  # (N, h)
        torch.add(rows[:, :, None], theta[:, k, 0, None, None] * xs, out=grid[..., k])
    return grid


def _warp(
    images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images (bilinear) and masks (nearest) through the same sampling grid.

    Padding is "reflection" for both. Zero padding would paint the uncovered corners black in
    the image and label them 0 in the mask (or whatever pad label one picks): black "pet" or
    black "background" that the data never contains, teaching the model an artefact.
    Reflection fills the corners with mirrored real content, and because image and mask are
    mirrored identically, every filled pixel still carries its own label.
    """
    grid = _affine_grid(theta, images.shape[-2], images.shape[-1])
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    # Nearest sampling copies values exactly, so the float round trip returns the same labels.
    warped = F.grid_sample(
        masks.unsqueeze(1).to(grid.dtype),
        grid,
        mode="nearest",
        padding_mode="reflection",
        align_corners=False,
    )
    return images, warped.squeeze(1).to(masks.dtype)


def _color_jitter(
    images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, sat: torch.Tensor
) -> torch.Tensor:
    """Brightness, then contrast, then saturation (torchvision's definitions), as one matrix.

    Each step is affine in the RGB vector of a pixel, so the three fold into out = M x + o with a
    per-sample 3x3 M and offset o (:func:`_color_affine`), applied by one batched matmul and one
    clamp. The only difference from torchvision's sequential ops is that clamping to [0, 1]
    happens once at the end instead of after every step.
    """
    n = images.shape[0]
    matrix, offset = _color_affine(images, brightness, contrast, sat)
    out = torch.baddbmm(offset.view(n, 3, 1), matrix, images.reshape(n, 3, -1))
    return out.view(images.shape).clamp_(0.0, 1.0)


def _color_affine(
    images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, sat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (N, 3, 3) matrix M and (N, 3) offset o of the colour jitter: out = M x + o.

    ``images`` (N, 3, H, W) in any value scale: the contrast offset is proportional to the mean
    grey level, so it scales with the input.
    """
    n, dev, dt = images.shape[0], images.device, images.dtype
    gray = torch.tensor(GRAY, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    # saturation s: x -> s x + (1 - s) gray(x) per channel
    sat_m = sat.view(n, 1, 1) * eye + (1.0 - sat).view(n, 1, 1) * gray.view(1, 1, 3)
    gain = (contrast * brightness).view(n, 1, 1)
    matrix = (gain * sat_m).to(dev, dt)
    # contrast c blends with the mean gray level of the brightened image: b * mean(gray(x)),
    # an offset (1 - c) b m in every channel before saturation, sat_m @ 1 after it.
    mean_gray = images.mean(dim=(2, 3)) @ gray.to(dev, dt)  # (N,)
    scale = ((1.0 - contrast) * brightness).view(n, 1) * sat_m.sum(dim=2)  # (N, 3)
    offset = scale.to(dev, dt) * mean_gray.view(n, 1)
    return matrix, offset


def make_batch(
    images_u8: torch.Tensor,
    masks: torch.Tensor,
    params: AugmentParams | None,
    generator: torch.Generator | None,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) images + label masks -> the network's input: augmented and normalised.

    Equals ``normalize(augment_batch(to_float(images_u8), masks, params, generator))`` (up to
    float rounding; same draws, same masks) with no augmentation when ``params`` or
    ``generator`` is None, but in fewer passes over the batch, which matters on a CPU where
    feeding competes with training for the same cores:

    - the geometric warp runs on a contiguous NCHW copy (grid_sample is slower on channels_last
      input) of the 0..255 values (the 1/255 is folded into the next step);
    - colour jitter, the clamp to [0, 1] and :func:`normalize` are one per-sample affine map
      (one batched matmul) and one clamp per channel (normalising is affine, so the clamp's
      bounds move through it);
    - the output is written in the requested memory format by one final copy;
    - without warp or colour, normalising is elementwise on the NHWC values (already the
      channels_last layout), with no copy but the float conversion.

    Returns float32 images (channels_last if asked) and int64 masks.
    """
    _check_batch(images_u8, masks)
    augment = params is not None and params.enabled and generator is not None
    if augment and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    masks = masks.long()
    draws = _draw(len(images_u8), params, generator) if augment else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if not (augment and (params.scale > 0 or params.rotate > 0 or params.color > 0)):
        return _flip_and_normalize(
            images_u8, masks, draws if augment and params.hflip else None, fmt
        )
    return _warp_colour_normalize(images_u8, masks, params, draws, fmt)


def _check_batch(images_u8: torch.Tensor, masks: torch.Tensor) -> None:
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images_u8.dtype} "
            f"{tuple(images_u8.shape)}"
        )
    n, h, w, _ = images_u8.shape
    _check_masks(masks, n, h, w)


def _affine_normalize() -> tuple[list[float], list[float]]:
    """Per channel a, b with normalize(x / 255) = a x + b."""
    scale = [1.0 / (255.0 * s) for s in STD]
    bias = [-m / s for m, s in zip(MEAN, STD, strict=True)]
    return scale, bias


def _flip_and_normalize(
    images_u8: torch.Tensor, masks: torch.Tensor, draws: dict | None, fmt: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most a flip (``draws`` given): elementwise on the NHWC bytes, no matmul."""
    scale, bias = _affine_normalize()
    x = images_u8.float()
    if draws is not None:
        flip = draws["flip"].to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
    x = x.mul_(x.new_tensor(scale)).add_(x.new_tensor(bias)).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=fmt), masks


def _warp_colour_normalize(
    images_u8: torch.Tensor,
    masks: torch.Tensor,
    params: AugmentParams,
    draws: dict,
    fmt: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp (or flip) on an NCHW copy, then colour, clamp and normalise as one affine map."""
    n, h, w, _ = images_u8.shape
    warp, color = params.scale > 0 or params.rotate > 0, params.color > 0
    x = images_u8.permute(0, 3, 1, 2).contiguous().float()  # NCHW: grid_sample's fast layout
    if warp:
        theta = _affine_theta(draws, h, w)
        x, masks = _warp(x, masks, theta.to(x.device, x.dtype))
    elif params.hflip:
        flip = draws["flip"].to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
    scale, bias = _affine_normalize()
    a, b = x.new_tensor(scale), x.new_tensor(bias)
    if color:
        matrix, offset = _color_affine(
            x, draws["brightness"], draws["contrast"], draws["saturation"]
        )
        # normalize(clamp(M x / 255 + o / 255, 0, 1)) = clamp(a M x + a o + b, lo_c, hi_c)
        matrix, offset = matrix * a.view(1, 3, 1), offset * a + b
    else:
        matrix, offset = torch.diag(a).expand(n, 3, 3), b.expand(n, 3)
    flat = torch.baddbmm(offset.view(n, 3, 1), matrix, x.reshape(n, 3, -1))
    if color:  # per-channel bounds of [0, 1] after normalising; scalar clamps are fast
        for c, (m, s) in enumerate(zip(MEAN, STD, strict=True)):
            flat[:, c].clamp_(-m / s, (1 - m) / s)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    return out.copy_(flat.view(x.shape)), masks

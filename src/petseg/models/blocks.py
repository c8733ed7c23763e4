"""Building blocks shared by the three architectures.

Every convolutional stage of every model is made by :func:`conv_block`, so the networks differ only
in how they change resolution (strided conv vs pooling, transposed conv vs unpooling) and in whether
the decoder sees encoder features (skips). That is the comparison; the blocks are held equal.

Extension point: a ``block: plain | residual | separable`` option per architecture would dispatch on
a name inside :func:`conv_block` (the architectures only ever call it with ``in_ch, out_ch, stride,
dropout``), so no architecture module has to change.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

MAX_WIDTH = 512
"""Channel cap: ``base_width * 2**level`` stops growing here (depth 6 at base 32 would reach 2048
channels and ~4x the parameters for little gain at 128-px inputs)."""


def level_widths(base_width: int, depth: int) -> tuple[int, ...]:
    """Channels at each resolution level 0 (full) .. depth (bottleneck): doubling, capped."""
    return tuple(
        min(base_width * 2**level, max(MAX_WIDTH, base_width)) for level in range(depth + 1)
    )


def conv_bn_relu(
    in_ch: int, out_ch: int, *, kernel_size: int = 3, stride: int = 1
) -> nn.Sequential:
    """Conv (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU; 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def conv_block(in_ch: int, out_ch: int, *, stride: int = 1, dropout: float = 0.0) -> nn.Sequential:
    """The one stage every architecture uses: two 3x3 conv-BN-ReLU, then Dropout2d if dropout > 0.

    ``stride=2`` makes the first convolution downsample (the strided encoder's only way down).
    """
    layers = [conv_bn_relu(in_ch, out_ch, stride=stride), conv_bn_relu(out_ch, out_ch)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def up_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """Learned 2x upsampling: 2x2 transposed conv with stride 2, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SegmentationModel(nn.Module):
    """Base of the three architectures: their params key and the input check.

    Subclasses map (N, in_channels, H, W) images to (N, num_classes, H, W) logits and call
    :meth:`check_input` first in ``forward``.
    """

    key: ClassVar[str]  # the params/registry key: models.<key>

    def __init__(self, *, in_channels: int, depth: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.depth = depth

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError saying how to fix a batch this model cannot take (shapes only)."""
        if x.dim() != 4:
            raise ValueError(
                f"{self.key}: expected a batch shaped (N, C, H, W), got shape {tuple(x.shape)}; "
                "add the batch dimension to a single image with x.unsqueeze(0)"
            )
        _, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"{self.key}: expected {self.in_channels} input channels, got {c} (shape "
                f"{tuple(x.shape)}); convert the images to RGB or build the model with "
                f"in_channels={c}"
            )
        multiple = 2**self.depth
        if h % multiple or w % multiple:
            raise ValueError(
                f"{self.key}: input size {h}x{w} is not divisible by 2**depth = {multiple} "
                f"(models.{self.key}.depth = {self.depth}); set preprocess.image_size to a "
                f"multiple of {multiple}, or lower models.{self.key}.depth"
            )

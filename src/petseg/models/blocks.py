"""Building blocks shared by every architecture.

Every convolutional stage of every model is made by :func:`conv_block`, so the networks differ only
in how they change resolution (strided conv vs pooling, transposed conv vs unpooling) and in whether
the decoder sees encoder features (skips). That is the comparison; the blocks are held equal.

Which block, per architecture (``models.<arch>.block`` and ``models.<arch>.bottleneck``):

``plain``      two 3x3 conv-BN-ReLU (the default; what the comparison was built with)
``residual``   the same convs, the second without its ReLU, plus a shortcut (identity, or a 1x1
               conv-BN projection where channels or resolution change), ReLU after the add (ResNet)
``separable``  every 3x3 conv becomes a depthwise 3x3 (one filter per channel) followed by a
               pointwise 1x1, then BN-ReLU (Xception's separable conv; MobileNet's building block)

``bottleneck = b > 1`` replaces the two 3x3 convs of any block by ResNet's bottleneck: a 1x1
conv-BN-ReLU down to ``out_ch // b`` channels, one 3x3 (separable for ``separable``) at that width,
a 1x1 conv-BN(-ReLU) back up to ``out_ch``. (This is the block's internal width reduction, not the
network's lowest level, which the architecture modules also call the bottleneck.) Whatever the
block, a stride of 2 goes to its (first) 3x3 convolution, as in ResNet v1.5.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
from torch import nn

MAX_WIDTH = 512
"""Channel cap: ``base_width * 2**level`` stops growing here (depth 6 at base 32 would reach 2048
channels and ~4x the parameters for little gain at 128-px inputs)."""

Block = Literal["plain", "residual", "separable"]
BLOCKS: tuple[str, ...] = get_args(Block)


def level_widths(base_width: int, depth: int) -> tuple[int, ...]:
    """Channels at each resolution level 0 (full) .. depth (bottleneck): doubling, capped."""
    return tuple(
        min(base_width * 2**level, max(MAX_WIDTH, base_width)) for level in range(depth + 1)
    )


def conv_bn(
    in_ch: int,
    out_ch: int,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    separable: bool = False,
    relu: bool = True,
) -> nn.Sequential:
    """Conv (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU if ``relu``; 'same' padding.

    ``separable``: a depthwise conv (``groups=in_ch``, it carries the stride) then a pointwise 1x1,
    with no BatchNorm or ReLU between them (Xception found none works best, and it saves memory).
    """
    pad = kernel_size // 2
    if separable:
        convs = [
            nn.Conv2d(in_ch, in_ch, kernel_size, stride, pad, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
        ]
    else:
        convs = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, bias=False)]
    layers = [*convs, nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_bn_relu(
    in_ch: int, out_ch: int, *, kernel_size: int = 3, stride: int = 1
) -> nn.Sequential:
    """Conv (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU; 'same' padding."""
    return conv_bn(in_ch, out_ch, kernel_size=kernel_size, stride=stride)


class Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``: the shortcut is the identity where ``body`` keeps the shape,
    else a 1x1 conv-BN projection with the body's stride (ResNet's option B)."""

    def __init__(self, body: nn.Sequential, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.shortcut = (
            nn.Identity()
            if in_ch == out_ch and stride == 1
            else conv_bn(in_ch, out_ch, kernel_size=1, stride=stride, relu=False)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += self.shortcut(x)  # in place: BatchNorm's backward does not need its output
        return self.relu(out)


def conv_block(
    in_ch: int,
    out_ch: int,
    *,
    stride: int = 1,
    dropout: float = 0.0,
    block: Block = "plain",
    bottleneck: int = 1,
) -> nn.Sequential:
    """The one stage every architecture uses: ``block`` convs (module docstring), then Dropout2d if
    dropout > 0.

    ``stride=2`` makes the block downsample (the strided encoder's only way down). The default
    ``plain`` block without bottleneck is two 3x3 conv-BN-ReLU, module for module as it always was.
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}; got {block!r}")
    if bottleneck < 1:
        raise ValueError(f"bottleneck must be >= 1 (1 = off), got {bottleneck!r}")
    separable = block == "separable"
    last_relu = block != "residual"  # a residual block's ReLU comes after the add
    if bottleneck == 1:
        body = [
            conv_bn(in_ch, out_ch, stride=stride, separable=separable),
            conv_bn(out_ch, out_ch, separable=separable, relu=last_relu),
        ]
    else:
        mid = max(1, out_ch // bottleneck)
        body = [
            conv_bn(in_ch, mid, kernel_size=1),
            conv_bn(mid, mid, stride=stride, separable=separable),
            conv_bn(mid, out_ch, kernel_size=1, relu=last_relu),
        ]
    layers: list[nn.Module] = (
        [Residual(nn.Sequential(*body), in_ch, out_ch, stride)] if block == "residual" else body
    )
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
    """Base of every architecture: their params key and the input check.

    Subclasses map (N, in_channels, H, W) images to (N, num_classes, H, W) logits and call
    :meth:`check_input` first in ``forward``.
    """

    key: ClassVar[str]  # the params/registry key: models.<key>

    def __init__(self, *, in_channels: int, depth: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.depth = depth

    def backbone(self) -> nn.Module | None:
        """The torchvision backbone that is this network's encoder (``models.<arch>.encoder``;
        :mod:`petseg.models.encoders`), or None for the network's own (scratch) encoder."""
        return self._modules.get("encoder")

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

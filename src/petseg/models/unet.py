"""``unet``: U-Net, an encoder-decoder whose decoder concatenates the encoder's features.

Down: 2x2 max pooling, then the shared conv block. Up: 2x2 transposed convolution with stride 2
(learned, as in the original U-Net's "up-convolution", and the same op as ``strided`` so that the
two differ in skips rather than in the upsampler; bilinear upsampling would also be
nondeterministic in backward on CUDA), then the encoder features of that level are concatenated
and the conv block fuses them.

What it probes: skip connections. ``unpool`` has the same encoder and passes only *where* each
maximum was; U-Net passes the full high-resolution features, which should mostly help the thin
``border`` class and object outlines.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from petseg.models.blocks import Block, SegmentationModel, conv_block, level_widths, up_conv


class UNet(SegmentationModel):
    key = "unet"

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 3,
        *,
        depth: int = 4,
        base_width: int = 32,
        dropout: float = 0.0,
        block: Block = "plain",
        bottleneck: int = 1,
    ) -> None:
        super().__init__(in_channels=in_channels, depth=depth)
        w = level_widths(base_width, depth)
        stage = partial(conv_block, block=block, bottleneck=bottleneck)  # every conv stage
        self.stem = stage(in_channels, w[0])
        self.pool = nn.MaxPool2d(2)
        # down[i] goes from level i to i+1; the last one is the bottleneck (dropout there).
        self.down = nn.ModuleList(
            stage(w[i], w[i + 1], dropout=dropout if i + 1 == depth else 0.0) for i in range(depth)
        )
        # up/dec are ordered deepest first; dec[j] takes [upsampled, skip] concatenated.
        levels = range(depth - 1, -1, -1)
        self.up = nn.ModuleList(up_conv(w[i + 1], w[i]) for i in levels)
        self.dec = nn.ModuleList(stage(2 * w[i], w[i], dropout=dropout) for i in levels)
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        x = self.stem(x)
        for down in self.down:
            skips.append(x)
            x = down(self.pool(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), self.skip(skip)], dim=1))
        return self.head(x)

    def skip(self, features: torch.Tensor) -> torch.Tensor:
        """What the decoder receives from the encoder at one level: its features, unchanged."""
        return features

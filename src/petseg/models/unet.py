"""``unet``: U-Net, an encoder-decoder whose decoder concatenates the encoder's features.

Down: 2x2 max pooling, then the shared conv block. Up: 2x2 transposed convolution with stride 2
(learned, as in the original U-Net's "up-convolution", and the same op as ``strided`` so that the
two differ in skips rather than in the upsampler; bilinear upsampling would also be
nondeterministic in backward on CUDA), then the encoder features of that level are concatenated
and the conv block fuses them.

What it probes: skip connections. ``unpool`` has the same encoder and passes only *where* each
maximum was; U-Net passes the full high-resolution features, which should mostly help the thin
``border`` class and object outlines.

With a backbone encoder (``encoder: resnet34``, ...; :mod:`petseg.models.encoders`) its stages
give the features of levels 1..depth, and the full-resolution level 0, which no backbone has, is
the network's own stem on the image: the decoder is unchanged (segmentation_models_pytorch's
``Unet("resnet34")`` has no level-0 skip and upsamples its last decoder output instead).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from petseg.models.blocks import Block, SegmentationModel, conv_block, level_widths, up_conv
from petseg.models.encoders import Backbone


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
        encoder: str = "scratch",
    ) -> None:
        super().__init__(in_channels=in_channels, depth=depth)
        w = level_widths(base_width, depth)
        stage = partial(conv_block, block=block, bottleneck=bottleneck)  # every conv stage
        self.stem = stage(in_channels, w[0])
        if encoder == "scratch":
            self.pool = nn.MaxPool2d(2)
            # down[i] goes from level i to i+1; the last one is the bottleneck (dropout there).
            self.down = nn.ModuleList(
                stage(w[i], w[i + 1], dropout=dropout if i + 1 == depth else 0.0)
                for i in range(depth)
            )
            enc = w  # channels of the encoder's features per level
        else:
            self.encoder = Backbone(encoder, depth, dropout)
            enc = (w[0], *self.encoder.channels)
        # up/dec are ordered deepest first; dec[j] takes [upsampled, skip] concatenated.
        levels = range(depth - 1, -1, -1)
        self.up = nn.ModuleList(
            up_conv(w[i + 1] if i + 1 < depth else enc[depth], w[i]) for i in levels
        )
        self.dec = nn.ModuleList(stage(w[i] + enc[i], w[i], dropout=dropout) for i in levels)
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = self.features(x)
        x = skips.pop()  # the bottleneck
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), self.skip(skip)], dim=1))
        return self.head(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's output at each level 0 (full resolution) .. depth (the bottleneck)."""
        features = [self.stem(x)]
        if self.backbone() is not None:
            return features + self.encoder(x)
        for down in self.down:
            features.append(down(self.pool(features[-1])))
        return features

    def skip(self, features: torch.Tensor) -> torch.Tensor:
        """What the decoder receives from the encoder at one level: its features, unchanged."""
        return features

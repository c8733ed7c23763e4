"""``strided``: an all-convolutional encoder-decoder with learned resampling and no skips.

Down: each level's first 3x3 convolution has stride 2 (no pooling). Up: 2x2 transposed
convolutions with stride 2. The decoder sees only the bottleneck, so every detail of the output
must pass through the 2**depth-times smaller code.

What it probes: the baseline for *learned* down- and upsampling without any help from the encoder.
Against ``unpool`` it isolates learned (transposed conv) vs index-guided (max-unpooling)
upsampling; against ``unet`` it shows what skip connections add.

With a backbone encoder (``encoder: resnet34``, ...; :mod:`petseg.models.encoders`) the stem and
the strided stages are replaced by the backbone's stages, whose deepest output the same decoder
upsamples: still no skips, so it is the transfer-learning baseline without them.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from petseg.models.blocks import Block, SegmentationModel, conv_block, level_widths, up_conv
from petseg.models.encoders import Backbone


class StridedNet(SegmentationModel):
    key = "strided"

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
        if encoder == "scratch":
            self.stem = stage(in_channels, w[0])
            # down[i] goes from level i to i+1; the last one is the bottleneck (dropout there).
            self.down = nn.ModuleList(
                stage(w[i], w[i + 1], stride=2, dropout=dropout if i + 1 == depth else 0.0)
                for i in range(depth)
            )
            bottom = w[depth]  # channels of the bottleneck
        else:
            self.encoder = Backbone(encoder, depth, dropout)
            bottom = self.encoder.channels[-1]
        # up/dec are ordered deepest first: up[j] goes from level depth-j to depth-j-1.
        levels = range(depth - 1, -1, -1)
        self.up = nn.ModuleList(
            up_conv(w[i + 1] if i + 1 < depth else bottom, w[i]) for i in levels
        )
        self.dec = nn.ModuleList(stage(w[i], w[i], dropout=dropout) for i in levels)
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.encode(x)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(up(x))
        return self.head(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck: the deepest features of the encoder."""
        if self.backbone() is not None:
            return self.encoder(x)[-1]
        x = self.stem(x)
        for down in self.down:
            x = down(x)
        return x

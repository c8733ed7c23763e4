"""``unpool``: a SegNet-style encoder-decoder that upsamples with the encoder's pooling indices.

Down: 2x2 max pooling that remembers where each maximum was (``return_indices=True``), then the
shared conv block. Up: a 1x1 conv-BN-ReLU matches the channel count of the pooled features, then
max-unpooling puts each value back where its maximum came from (zeros elsewhere), then the conv
block densifies the sparse map. The indices are positions, not features: no encoder activations
reach the decoder, so this is still a skip-free network.

``upsample: nearest`` keeps every parameter but replaces unpooling by nearest-neighbour upsampling
(no indices), the ablation that tells whether the indices themselves matter.

What it probes: index-guided vs learned upsampling (against ``strided``, which has no pooling and
upsamples with transposed convolutions), and positions-only vs full-feature skips (against
``unet``, which has the same encoder).

Backends: max-unpooling was checked on CPU with float32, bfloat16 and channels_last inputs
(forward and backward) and works unchanged; under CPU autocast it runs in float32 (autocast's
policy) and the next convolution casts back. The CUDA kernel also takes half/bfloat16 but returns
a contiguous (NCHW) tensor, which the following convolution converts back to channels_last.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from petseg.models.blocks import Block, SegmentationModel, conv_block, conv_bn_relu, level_widths


def max_unpool2x2(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inverse of 2x2, stride-2 max pooling: ``F.max_unpool2d(x, indices, kernel_size=2)``.

    PyTorch flags max_unpool2d as nondeterministic (duplicate indices would race), so under
    ``torch.use_deterministic_algorithms(True)`` it raises, on CPU as on CUDA, although
    non-overlapping windows never repeat an index. In that mode the identical result is built from
    deterministic ops instead: nearest-neighbour upsampling, kept only where the index points.
    """
    if not torch.are_deterministic_algorithms_enabled():
        return F.max_unpool2d(x, indices, kernel_size=2)
    h, w = 2 * x.shape[-2], 2 * x.shape[-1]
    target = indices.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    position = torch.arange(h * w, device=x.device).view(h, w)
    return F.interpolate(x, scale_factor=2, mode="nearest") * (target == position)


class UnpoolNet(SegmentationModel):
    key = "unpool"

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
        upsample: Literal["indices", "nearest"] = "indices",
        encoder: Literal["scratch"] = "scratch",
    ) -> None:
        super().__init__(in_channels=in_channels, depth=depth)
        if upsample not in ("indices", "nearest"):
            raise ValueError(f"upsample must be 'indices' or 'nearest', got {upsample!r}")
        if encoder != "scratch":  # a backbone has no pooling indices to unpool with
            raise ValueError(f"unpool has its own encoder only (scratch), got {encoder!r}")
        self.upsample = upsample
        w = level_widths(base_width, depth)
        stage = partial(conv_block, block=block, bottleneck=bottleneck)  # every conv stage
        self.stem = stage(in_channels, w[0])
        self.pool = nn.MaxPool2d(2, return_indices=True)
        # down[i] goes from level i to i+1; the last one is the bottleneck (dropout there).
        self.down = nn.ModuleList(
            stage(w[i], w[i + 1], dropout=dropout if i + 1 == depth else 0.0) for i in range(depth)
        )
        # project/dec are ordered deepest first: project[j] maps level depth-j's channels to those
        # of the indices it is unpooled with (the pooled features of level depth-j-1).
        levels = range(depth - 1, -1, -1)
        self.project = nn.ModuleList(conv_bn_relu(w[i + 1], w[i], kernel_size=1) for i in levels)
        self.dec = nn.ModuleList(stage(w[i], w[i], dropout=dropout) for i in levels)
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        indices = []
        x = self.stem(x)
        for down in self.down:
            x, idx = self.pool(x)
            indices.append(idx)
            x = down(x)
        for project, dec, idx in zip(self.project, self.dec, reversed(indices), strict=True):
            x = project(x)
            if self.upsample == "indices":
                x = max_unpool2x2(x, idx)
            else:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = dec(x)
        return self.head(x)

"""``unet_noskip``: the U-Net with its skip connections cut, and nothing else changed.

The ablation behind "do skip connections matter": the very same layers, parameters and FLOPs as
``unet`` (and configured by ``models.unet``, so the two cannot drift apart), but every skip tensor
is replaced by zeros before the concatenation. The decoder's convolutions still run over the
skip channels, so the cost is identical, yet no encoder feature reaches the decoder except through
the bottleneck. Against ``unet`` it isolates the information the skips carry; it cannot say how a
decoder designed without skips (fewer input channels, other widths) would do.
"""

from __future__ import annotations

import torch

from petseg.models.unet import UNet


class UNetNoSkip(UNet):
    key = "unet_noskip"

    def skip(self, features: torch.Tensor) -> torch.Tensor:
        """Zeros in place of the encoder features: the same shapes and FLOPs, no information.

        Computed from the features (zero gradients flow back) rather than made anew: with a
        backbone encoder the stem feeds the level-0 skip alone, and DDP wants every parameter to
        receive a gradient, if only a zero one."""
        return features * 0

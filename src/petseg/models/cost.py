"""What a network costs: parameters and forward FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from petseg.models.blocks import SegmentationModel


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def gflops_per_image(model: SegmentationModel, image_size: int) -> float:
    """Forward GFLOPs for one (1, C, S, S) image in eval mode, as torch's FlopCounterMode counts.

    One multiply-accumulate counts as 2 FLOPs. Only convolutions (transposed too) and matrix
    products are counted; BatchNorm, ReLU, pooling and unpooling are not (they are memory-bound and
    small next to the convolutions).
    """
    # Imported here: torch's flop counter pulls in the compiler stack (tens of MB resident), which a
    # training process would otherwise carry through its memory peak.
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(
        1, model.in_channels, image_size, image_size, device=param.device, dtype=param.dtype
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9

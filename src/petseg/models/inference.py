"""A trained network prepared for inference."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is a fixed per-channel affine map, so it folds into the preceding
    convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``; transposed
    convolutions too) and the BatchNorm becomes an Identity. The outputs are equal up to float
    rounding, and inference skips one memory-bound pass over every activation: on a CPU with the
    narrow demo widths that pass costs a good part of the forward. Every conv-BN pair of the
    models sits in one ``nn.Sequential`` (:func:`petseg.models.blocks.conv_bn`, ``up_conv``), which
    is where this looks. The original model is left untouched (training continues from it).
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for conv_name, bn_name in zip(names, names[1:], strict=False):
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
                transpose = isinstance(conv, nn.ConvTranspose2d)
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                module._modules[bn_name] = nn.Identity()
    return fused

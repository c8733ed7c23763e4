"""The three segmentation networks compared, and the registry that builds them from params.

Every model maps (N, 3, H, W) images to (N, num_classes, H, W) logits, with H and W multiples of
2**depth. At equal ``depth`` and ``base_width`` they share the channel widths of every level, and
at equal ``block`` and ``bottleneck`` the conv blocks (:mod:`petseg.models.blocks`), so they differ
only in what the comparison is about:

``strided``  stride-2 convs down, transposed convs up, no skips    (learned resampling)
``unpool``   max-pool down, max-unpool with the pooling indices up  (index-guided upsampling)
``unet``     max-pool down, transposed convs up, concatenated skips (feature skips)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from petseg import NUM_CLASSES
from petseg.config import ModelsParams
from petseg.errors import ParamsError
from petseg.models.blocks import SegmentationModel
from petseg.models.strided import StridedNet
from petseg.models.unet import UNet
from petseg.models.unpool import UnpoolNet

MODELS: Mapping[str, type[SegmentationModel]] = MappingProxyType(
    {cls.key: cls for cls in (StridedNet, UnpoolNet, UNet)}
)
ARCHITECTURES: tuple[str, ...] = tuple(MODELS)


def build_model(
    name: str, params: ModelsParams, num_classes: int = NUM_CLASSES, in_channels: int = 3
) -> SegmentationModel:
    """A freshly initialised ``name`` model configured by ``params.<name>`` (models section)."""
    if name not in MODELS:
        raise ParamsError(f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)}")
    # Every key of models.<name> is a keyword of the constructor, so a new key must be wired there.
    arch_params = getattr(params, name).model_dump()
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **arch_params)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def gflops_per_image(model: SegmentationModel, image_size: int) -> float:
    """Forward GFLOPs for one (1, C, S, S) image in eval mode, as torch's FlopCounterMode counts.

    One multiply-accumulate counts as 2 FLOPs. Only convolutions (transposed too) and matrix
    products are counted; BatchNorm, ReLU, pooling and unpooling are not (they are memory-bound and
    small next to the convolutions).
    """
    # Imported here: torch's flop counter pulls in the compiler stack (~75 MB resident), which a
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

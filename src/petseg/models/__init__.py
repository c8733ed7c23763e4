"""The segmentation networks compared, and the registry that builds them from params.

Every model maps (N, 3, H, W) images to (N, num_classes, H, W) logits, with H and W multiples of
2**depth. At equal ``depth`` and ``base_width`` they share the channel widths of every level, and
at equal ``block`` and ``bottleneck`` the conv blocks (:mod:`petseg.models.blocks`), so they differ
only in what the comparison is about:

``strided``  stride-2 convs down, transposed convs up, no skips    (learned resampling)
``unpool``   max-pool down, max-unpool with the pooling indices up  (index-guided upsampling)
``unet``     max-pool down, transposed convs up, concatenated skips (feature skips)
``unet_noskip``  the U-Net with every skip tensor zeroed: the skip ablation, same cost
"""

from petseg.models.cost import count_params, gflops_per_image
from petseg.models.model_file import ModelInfo, load_model, save_model
from petseg.models.registry import (
    ARCHITECTURES,
    MODELS,
    build_model,
    model_class,
)

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "ModelInfo",
    "build_model",
    "count_params",
    "gflops_per_image",
    "load_model",
    "model_class",
    "save_model",
]

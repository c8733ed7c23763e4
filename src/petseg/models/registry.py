"""The registry: architecture name -> the class that implements it, and the narrow factory
:func:`build_model` (the params section of each: ``config.ARCH_SECTIONS``).

Each class is named by its module and imported when a model of it is first built, not when the
registry is imported: a train stage thus runs its own architecture's module only, and dvc.yaml lists
only that one in its deps, so editing ``unet.py`` retrains the U-Net and its ablation alone. The
names are fixed here, in the order every table and plot uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from petseg import NUM_CLASSES
from petseg.config import ARCH_SECTIONS, WEIGHT_SOURCE, ModelsParams
from petseg.errors import ParamsError
from petseg.models.blocks import SegmentationModel

MODELS: Mapping[str, str] = MappingProxyType(
    {
        "strided": "petseg.models.strided:StridedNet",
        "unpool": "petseg.models.unpool:UnpoolNet",
        "unet": "petseg.models.unet:UNet",
        "unet_noskip": "petseg.models.unet_noskip:UNetNoSkip",
    }
)
ARCHITECTURES: tuple[str, ...] = tuple(MODELS)
assert tuple(ARCH_SECTIONS) == ARCHITECTURES, "config.ARCH_SECTIONS must list the same networks"


def model_class(name: str) -> type[SegmentationModel]:
    """The class of architecture ``name`` (its module imported on first use)."""
    if name not in MODELS:
        raise ParamsError(f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(
    name: str, params: ModelsParams, num_classes: int = NUM_CLASSES, in_channels: int = 3
) -> SegmentationModel:
    """A freshly initialised ``name`` model configured by its section of ``params`` (models)."""
    cls = model_class(name)
    # Every key of models.<section> is a keyword of the constructor (a new key must be wired
    # there) but those saying where pretrained weights come from: training loads them
    # (petseg.models.pretrained), a model file brings its own.
    kwargs = params.of(name).model_dump(exclude=set(WEIGHT_SOURCE))
    return cls(num_classes=num_classes, in_channels=in_channels, **kwargs)

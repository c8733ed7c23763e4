"""The registry: architecture name -> model class, and the narrow factory that builds one."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

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

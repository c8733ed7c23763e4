"""torchvision backbones as encoders (``models.<arch>.encoder``), for ``strided`` and ``unet``.

A backbone replaces a network's own encoder: its first ``depth`` stages run one after the other,
each halving the resolution (stage k ends at 1/2**k of the input), and their outputs are what the
decoder upsamples from (``strided``: the last one) or concatenates (``unet``: every one, as skips).
The decoder is the network's own, with its ``base_width`` widths, so a backbone changes what the
comparison's encoder is and nothing else. The stages, as segmentation_models_pytorch cuts them:

``resnet18``, ``resnet34``    conv1-bn-relu | maxpool + layer1 | layer2 | layer3 | layer4
``mobilenet_v3_large``        features[0:2] | [2:4] | [4:7] | [7:13] | [13:17]

Each backbone is tied to one entry of torchvision's weights enum (:data:`WEIGHTS`): the file its
pretrained weights come from (:mod:`petseg.models.pretrained`), and the input normalisation they
were trained with. The pipeline normalises every image with ImageNet's statistics
(:mod:`petseg.data.augment`); a backbone maps that to its weights' own normalisation with a fixed
per-channel affine map held in its state dict, so whatever feeds a model file (training,
evaluate, predict, the ONNX export) feeds the backbone what its weights expect. For the three
weights here both are ImageNet's and the map is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_weight

from petseg.config import ENCODERS
from petseg.data.augment import MEAN, STD


def _resnet_stages(net: nn.Module) -> list[nn.Module]:
    return [
        nn.Sequential(net.conv1, net.bn1, net.relu),
        nn.Sequential(net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        net.layer4,
    ]


def _mobilenet_stages(net: nn.Module) -> list[nn.Module]:
    f = net.features
    return [f[0:2], f[2:4], f[4:7], f[7:13], f[13:17]]


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., nn.Module]  # torchvision's builder, called with weights=None
    weights: str  # the weights enum entry, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    channels: tuple[int, ...]  # output channels of stages 1..5
    stages: Callable[[nn.Module], list[nn.Module]]  # the five stages of a built network


# Fixed enum entries, not DEFAULT: what DEFAULT means changes between torchvision releases.
BACKBONES = MappingProxyType(
    {
        "resnet18": BackboneSpec(
            torchvision.models.resnet18,
            "ResNet18_Weights.IMAGENET1K_V1",
            (64, 64, 128, 256, 512),
            _resnet_stages,
        ),
        "resnet34": BackboneSpec(
            torchvision.models.resnet34,
            "ResNet34_Weights.IMAGENET1K_V1",
            (64, 64, 128, 256, 512),
            _resnet_stages,
        ),
        "mobilenet_v3_large": BackboneSpec(
            torchvision.models.mobilenet_v3_large,
            "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
            (16, 24, 40, 112, 960),
            _mobilenet_stages,
        ),
    }
)
assert ("scratch", *BACKBONES) == ENCODERS, "config.ENCODERS must list the same backbones"


def weights_of(name: str) -> WeightsEnum:
    """The torchvision weights enum entry of backbone ``name``: its url (file name with the hash
    prefix), its metadata and its transforms (the normalisation)."""
    return get_weight(BACKBONES[name].weights)


def normalisation(name: str) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel of [0, 1] images that backbone ``name``'s weights expect."""
    transform = weights_of(name).transforms()
    return list(transform.mean), list(transform.std)


class Backbone(nn.Module):
    """The first ``depth`` stages of torchvision backbone ``name``; ``forward`` returns the output
    of each (stage k at 1/2**k of the input), from images normalised as the pipeline does."""

    def __init__(self, name: str, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        spec = BACKBONES[name]
        self.name = name
        self.stages = nn.ModuleList(spec.stages(spec.build(weights=None))[:depth])
        self.channels = spec.channels[:depth]
        # Bottleneck dropout, as the scratch encoders have in their deepest stage.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(name))
        pipe_mean, pipe_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))
        # (x * pipe_std + pipe_mean - mean) / std: the weights' normalisation from the pipeline's.
        self.register_buffer("input_scale", pipe_std / std)
        self.register_buffer("input_shift", (pipe_mean - mean) / std)
        self.frozen = False

    def freeze(self, frozen: bool) -> bool:
        """Freeze (no gradients, and BatchNorm normalises with its running statistics without
        updating them: eval mode from the next ``train()``) or unfreeze; whether it changed."""
        if frozen == self.frozen:
            return False
        self.frozen = frozen
        for p in self.parameters():
            p.requires_grad_(not frozen)
        return True

    def train(self, mode: bool = True) -> Backbone:
        return super().train(mode and not self.frozen)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x * self.input_scale + self.input_shift
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        features[-1] = self.dropout(features[-1])
        return features

    def load_torchvision(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a torchvision state dict of the whole network (strict: every key of it must fit),
        keeping the stages used here."""
        spec = BACKBONES[self.name]
        with torch.device("meta"):  # no random initialisation: every tensor is replaced
            net = spec.build(weights=None)
        net.load_state_dict(state_dict, assign=True)
        for mine, theirs in zip(self.stages, spec.stages(net), strict=False):
            mine.load_state_dict(theirs.state_dict())

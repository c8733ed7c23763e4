"""Backbone encoders (models.<arch>.encoder): shapes, skips, normalisation, model files, limits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from petseg import config
from petseg.config import ARCH_SECTIONS, BACKBONE_SECTIONS, ENCODERS, ModelsParams
from petseg.data.augment import MEAN, STD
from petseg.errors import ParamsError
from petseg.models import build_model, count_params, load_model, save_model
from petseg.models import encoders as enc
from petseg.models.inference import fuse_for_inference

BACKBONES = ENCODERS[1:]
TAKES_BACKBONE = [a for a, s in ARCH_SECTIONS.items() if s in BACKBONE_SECTIONS]


def backbone_net(arch: str, encoder: str, depth: int = 3, **extra: object) -> nn.Module:
    torch.manual_seed(0)
    section = {"depth": depth, "base_width": 8, "encoder": encoder, **extra}
    return build_model(arch, ModelsParams.model_validate({ARCH_SECTIONS[arch]: section}))


def test_the_architectures_that_take_a_backbone():
    assert TAKES_BACKBONE == ["strided", "unet", "unet_noskip"]
    assert BACKBONES == tuple(enc.BACKBONES) == ("resnet18", "resnet34", "mobilenet_v3_large")


@pytest.mark.parametrize("encoder", BACKBONES)
@pytest.mark.parametrize(
    ("arch", "depth"), [("unet", 1), ("unet", 5), ("strided", 2), ("unet_noskip", 5)]
)
def test_output_shape_and_backward_with_every_backbone(arch, encoder, depth):
    model = backbone_net(arch, encoder, depth)
    x = torch.randn(2, 3, 64, 32)  # not square
    out = model(x)
    assert out.shape == (2, 3, 64, 32)
    out.logsumexp(dim=1).mean().backward()
    assert model.backbone() is not None and len(model.backbone().stages) == depth
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("encoder", BACKBONES)
def test_stage_k_ends_at_one_2_to_the_k_with_the_listed_channels(encoder):
    backbone = enc.Backbone(encoder, 5)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(enc.BACKBONES[encoder].channels)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("encoder", BACKBONES)
def test_unet_skips_come_from_the_backbone_stages(encoder):
    model = backbone_net("unet", encoder).train()
    x = torch.randn(2, 3, 32, 32)
    levels = model.features(x)
    assert [f.shape[-1] for f in levels] == [32, 16, 8, 4]
    backbone = model.backbone()
    for level, stage_out in zip(levels[1:], backbone(x), strict=True):
        torch.testing.assert_close(level, stage_out)
    # The U-Net's output depends on what travels through its skips; the ablation's does not.
    ablation = backbone_net("unet_noskip", encoder).train()
    ablation.load_state_dict(model.state_dict())
    for net, matters in ((model, True), (ablation, False)):
        with torch.no_grad():
            before = net(x)
            original = net.skip
            net.skip = lambda f, original=original: original(f + torch.randn_like(f))
            after = net(x)
        assert (not torch.allclose(before, after, atol=1e-5)) == matters


def test_a_backbone_replaces_the_scratch_encoder_and_keeps_the_decoder():
    scratch = backbone_net("unet", "scratch")
    resnet = backbone_net("unet", "resnet18")
    assert not hasattr(resnet, "down") and scratch.backbone() is None
    assert [d[0][0].out_channels for d in resnet.dec] == [d[0][0].out_channels for d in scratch.dec]
    assert resnet.up[0][0].in_channels == 128  # resnet18's third stage
    assert count_params(resnet) > count_params(scratch)


def test_the_pipeline_normalisation_becomes_the_weights_own(monkeypatch):
    # The three weights use ImageNet's statistics, as the pipeline does: the map is the identity.
    for name in BACKBONES:
        assert enc.normalisation(name) == (list(MEAN), list(STD))
        backbone = enc.Backbone(name, 1)
        assert torch.equal(backbone.input_scale, torch.ones(1, 3, 1, 1))
        assert torch.equal(backbone.input_shift, torch.zeros(1, 3, 1, 1))
    # Weights trained with other statistics: the backbone sees (x / 255 - their mean) / their std.
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]
    monkeypatch.setattr(enc, "normalisation", lambda name: (mean, std))
    backbone = enc.Backbone("resnet18", 1)
    pixels = torch.rand(2, 3, 4, 4)
    pipeline = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    seen = []
    backbone.stages[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    backbone(pipeline)
    expected = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected)


@pytest.mark.parametrize("encoder", BACKBONES)
def test_the_model_file_carries_the_backbone_and_its_normalisation(encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # nothing may be fetched
    arch = ModelsParams.model_validate(
        {"unet": {"depth": 2, "base_width": 8, "encoder": encoder, "pretrained": True}}
    ).unet
    model = backbone_net("unet", encoder, depth=2)
    with torch.no_grad():
        model.backbone().input_shift.fill_(0.25)  # as if its weights wanted another mean
    save_model(tmp_path / "m.pt", "unet", arch, 32, model.state_dict())
    loaded, info = load_model(tmp_path / "m.pt")
    assert (info.params["encoder"], info.params["pretrained"]) == (encoder, True)
    assert torch.equal(loaded.backbone().input_shift, torch.full((1, 3, 1, 1), 0.25))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("encoder", BACKBONES)
@pytest.mark.parametrize("arch", TAKES_BACKBONE)
def test_fused_inference_model_equals_the_model(arch, encoder):
    model = backbone_net(arch, encoder, depth=2).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # running statistics that are not the identity
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(model)(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_frozen_backbone_stays_in_eval_mode_and_wants_no_gradients():
    model = backbone_net("unet", "resnet18").train()
    backbone = model.backbone()
    assert backbone.freeze(True) and not backbone.freeze(True)  # changed once
    model.train()
    assert model.training and not backbone.training
    assert not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoder"))
    assert backbone.freeze(False)
    model.train()
    assert all(m.training for m in backbone.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("section", "needles"),
    [
        ({"unpool": {"encoder": "resnet18"}}, ["models.unpool.encoder = 'resnet18'", "scratch"]),
        ({"unet": {"encoder": "vgg16"}}, ["models.unet.encoder = 'vgg16'", "'resnet34'"]),
        ({"unet": {"pretrained": True}}, ["models.unet.pretrained = True", "encoder scratch"]),
        (
            {"strided": {"encoder": "resnet18", "weights_path": "w.pth"}},
            ["models.strided.weights_path = 'w.pth'", "unless pretrained is true"],
        ),
        (
            {"unet": {"encoder": "resnet34", "depth": 6}},
            ["models.unet.depth = 6", "at most 5 with encoder resnet34"],
        ),
    ],
)
def test_bad_encoder_settings_name_the_key(section, needles):
    with pytest.raises(ParamsError) as exc:
        config.validate({"preprocess": {"image_size": 64}, "models": section})
    for needle in needles:
        assert needle in str(exc.value)


def test_the_unpool_error_lists_the_combinations_that_exist():
    with pytest.raises(ParamsError) as exc:
        config.validate({"models": {"unpool": {"encoder": "mobilenet_v3_large"}}})
    message = str(exc.value)
    assert "models.strided and models.unet" in message and "unet_noskip" in message
    assert all(name in message for name in ENCODERS)
    assert "models.unpool takes scratch only" in message


def test_unpool_refuses_a_backbone_when_built_directly():
    from petseg.models.unpool import UnpoolNet

    with pytest.raises(ValueError, match="scratch"):
        UnpoolNet(encoder="resnet18")  # type: ignore[arg-type]

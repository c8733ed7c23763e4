"""The three architectures, their registry and the size/FLOP helpers (tiny models, 32x32 inputs)."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from petseg import config
from petseg.config import ArchParams, ModelsParams, UnpoolParams
from petseg.errors import ParamsError
from petseg.models import (
    ARCHITECTURES,
    MODELS,
    build_model,
    count_params,
    gflops_per_image,
    model_class,
)
from petseg.models.blocks import BLOCKS, Residual, conv_block, conv_bn_relu
from petseg.models.unpool import max_unpool2x2

SIZE = 32
TINY = {"depth": 3, "base_width": 8}


def tiny_params(**overrides: object) -> ModelsParams:
    arch = {**TINY, **overrides}
    upsample = arch.pop("upsample", "indices")
    return ModelsParams(
        strided=ArchParams(**arch),
        unpool=UnpoolParams(**arch, upsample=upsample),
        unet=ArchParams(**arch),
    )


def tiny(name: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, tiny_params(**overrides))


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def varied(logits: torch.Tensor) -> torch.Tensor:
    """Guard comparisons against a trivial constant output.

    Comparisons run in train mode: a fresh model in eval mode (BatchNorm without statistics) decays
    its activations to ~0 over its many layers and outputs little more than the head's bias.
    """
    assert logits.std(dim=(2, 3)).min() > 1e-2
    return logits


@pytest.fixture
def deterministic_mode():
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_registry_is_immutable_and_ordered():
    assert ARCHITECTURES == ("strided", "unpool", "unet", "unet_noskip")
    with pytest.raises(TypeError):
        MODELS["other"] = MODELS["unet"]  # type: ignore[index]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_registry_name_is_the_class_key_and_its_module(name):
    # One name per architecture: params key, module, class key (used in its error messages).
    cls = model_class(name)
    assert cls.key == name and cls.__module__ == f"petseg.models.{name}"


def test_registry_imports_an_architecture_only_when_it_is_built():
    code = (
        "import sys; from petseg.models import build_model; from petseg.config import ModelsParams;"
        "build_model('unet', ModelsParams());"
        "print(sorted(m for m in ('strided', 'unpool', 'unet')"
        " if f'petseg.models.{m}' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['unet']"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ParamsError) as exc:
        build_model("segnet", ModelsParams())
    assert "'segnet'" in str(exc.value)
    assert "strided, unpool, unet" in str(exc.value)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_params_reach_the_model(name):
    model = build_model(name, tiny_params(depth=2, base_width=4), num_classes=5, in_channels=1)
    assert (model.depth, model.in_channels) == (2, 1)
    assert model.head.out_channels == 5
    assert model.stem[0][0].out_channels == 4


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("depth", [2, 3])
def test_output_shape_and_backward(name, depth):
    model = tiny(name, depth=depth)
    x = images(2, 32)
    out = model(x[:, :, :, :16] if depth == 2 else x)  # also a non-square input
    assert out.shape == (2, 3, 32, 16 if depth == 2 else 32)
    out.logsumexp(dim=1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize(
    ("shape", "needles"),
    [
        ((2, 3, 36, 32), ["36x32", "multiple of 8", "models.{name}.depth"]),
        ((2, 1, 32, 32), ["3 input channels, got 1"]),
        ((3, 32, 32), ["(N, C, H, W)", "unsqueeze(0)"]),
    ],
)
def test_bad_input_says_how_to_fix(name, shape, needles):
    with pytest.raises(ValueError) as exc:
        tiny(name)(torch.zeros(shape))
    for needle in needles:
        assert needle.format(name=name) in str(exc.value)


def test_size_error_names_image_size_setting():
    with pytest.raises(ValueError, match=r"set preprocess\.image_size to a multiple of 8"):
        tiny("unet")(torch.zeros(1, 3, 36, 36))


def test_unpool_indices_and_nearest_differ_with_the_same_weights():
    with_indices = tiny("unpool", upsample="indices")
    nearest = tiny("unpool", upsample="nearest")
    nearest.load_state_dict(with_indices.state_dict())  # strict: identical parameter sets
    x = images()
    assert not torch.allclose(varied(with_indices(x)), nearest(x), atol=1e-3)


def test_max_unpool2x2_is_max_unpool2d_in_deterministic_mode(deterministic_mode):
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    pooled, idx = F.max_pool2d(x, 2, return_indices=True)
    pooled.requires_grad_()
    out = max_unpool2x2(pooled, idx)
    out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out))
    torch.use_deterministic_algorithms(False)
    ref_in = pooled.detach().requires_grad_()
    ref = F.max_unpool2d(ref_in, idx, 2)
    ref.backward(torch.arange(ref.numel(), dtype=ref.dtype).view_as(ref))
    assert torch.equal(out, ref)
    assert torch.equal(pooled.grad, ref_in.grad)


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("block", BLOCKS)
def test_trains_in_deterministic_mode(name, block, deterministic_mode):
    tiny(name, block=block)(images()).mean().backward()


def test_unet_output_depends_on_its_skips():
    model = tiny("unet")
    x = images()
    ref = varied(model(x))
    width = model.stem[0][0].out_channels  # level-0 skip: the second half of dec[-1]'s input

    def zero_skip(module, args):
        (joined,) = args
        return torch.cat([joined[:, :width], torch.zeros_like(joined[:, width:])], dim=1)

    handle = model.dec[-1].register_forward_pre_hook(zero_skip)
    try:
        without_skip = model(x)
    finally:
        handle.remove()
    assert not torch.allclose(ref, without_skip, atol=1e-3)
    assert torch.equal(model(x), ref)  # the hook is gone again


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("block", BLOCKS)
def test_dropout_is_stochastic_in_train_and_deterministic_in_eval(name, block):
    model = tiny(name, dropout=0.5, block=block)
    x = images()
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_no_dropout_is_deterministic_in_train(name):
    model = tiny(name).train()
    x = images()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("block", BLOCKS)
def test_channels_last_matches_contiguous(name, block):
    model = tiny(name, block=block)
    x = images()
    ref = varied(model(x))
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("block", BLOCKS)
def test_bf16_autocast_channels_last_train_step(name, block):
    model = tiny(name, block=block).to(memory_format=torch.channels_last)
    x = images().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out, torch.zeros(2, SIZE, SIZE, dtype=torch.long))
    assert out.dtype == torch.bfloat16
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_gflops_positive_and_quadratic_in_image_side(name):
    model = tiny(name).train()
    small, large = gflops_per_image(model, 32), gflops_per_image(model, 64)
    assert small > 0
    assert large / small == pytest.approx(4.0, rel=0.01)
    assert model.training  # the mode is restored


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize(("block", "bottleneck"), [("plain", 1), ("residual", 2), ("separable", 1)])
def test_gflops_is_two_flops_per_conv_mac(name, block, bottleneck):
    model = tiny(name, block=block, bottleneck=bottleneck)
    macs = []

    def count(module, args, out):
        (x,) = args
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel feeds a k*k patch
            macs.append(x.numel() * module.out_channels * module.weight[0, 0].numel())
        else:  # each output pixel sums a k*k*(in_channels/groups) window
            macs.append(out.numel() * module.weight[0].numel())

    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    for module in model.modules():
        if isinstance(module, convs):
            module.register_forward_hook(count)
    flops = gflops_per_image(model, SIZE) * 1e9
    assert flops == pytest.approx(2 * sum(macs), rel=1e-9)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_count_params(name):
    model = tiny(name)
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0


def test_default_widths_are_shared():
    """Equal depth/base_width give every architecture the same encoder widths (fair comparison)."""
    widths = {
        name: [block[0][0].out_channels for block in build_model(name, ModelsParams()).down]
        for name in ARCHITECTURES
    }
    assert widths == dict.fromkeys(ARCHITECTURES, [64, 128, 256, 512])


# ---------------------------------------------------------------------------- block variants
VARIANTS = [(block, bottleneck) for block in BLOCKS for bottleneck in (1, 4)]


def bn_params(ch: int) -> int:
    return 2 * ch  # BatchNorm weight and bias


def block_params(block: str, bottleneck: int, i: int, o: int) -> int:
    """Closed-form parameter count of ``conv_block(i, o)``: bias-free convs, each with BatchNorm."""

    def conv3x3(a: int, b: int) -> int:
        return (9 * a + a * b if block == "separable" else 9 * a * b) + bn_params(b)

    if bottleneck == 1:
        body = conv3x3(i, o) + conv3x3(o, o)
    else:
        m = o // bottleneck
        body = i * m + bn_params(m) + conv3x3(m, m) + m * o + bn_params(o)
    projection = i * o + bn_params(o) if block == "residual" and i != o else 0
    return body + projection


def test_block_names_match_the_config():
    assert get_args(ArchParams.model_fields["block"].annotation) == BLOCKS
    assert (ArchParams().block, ArchParams().bottleneck) == ("plain", 1)


def test_plain_block_is_unchanged():
    """Same modules and state_dict keys as two conv_bn_relu: old checkpoints still load."""
    block = conv_block(8, 16)
    reference = torch.nn.Sequential(conv_bn_relu(8, 16), conv_bn_relu(16, 16))
    assert list(block.state_dict()) == list(reference.state_dict())
    assert repr(block) == repr(reference)
    block.load_state_dict(reference.state_dict())  # strict


@pytest.mark.parametrize(("block", "bottleneck"), VARIANTS)
@pytest.mark.parametrize(("in_ch", "out_ch"), [(8, 16), (16, 16), (32, 16)])
def test_block_parameter_count(block, bottleneck, in_ch, out_ch):
    module = conv_block(in_ch, out_ch, block=block, bottleneck=bottleneck)
    assert count_params(module) == block_params(block, bottleneck, in_ch, out_ch)


@pytest.mark.parametrize(("block", "bottleneck"), VARIANTS)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_shape_backward_and_stride(block, bottleneck, stride):
    module = conv_block(8, 16, stride=stride, block=block, bottleneck=bottleneck)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 16, 12 // stride, 12 // stride)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in module.parameters())
    # The stride goes to the one 3x3 conv (depthwise for separable), and to a projection's 1x1.
    strided = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    k3 = [m for m in strided if m.kernel_size == (3, 3)]
    if stride == 1:
        assert not strided
    else:
        assert len(k3) == 1
        assert k3[0].groups == (k3[0].in_channels if block == "separable" else 1)
        assert len(strided) == 1 + (block == "residual")


@pytest.mark.parametrize("bottleneck", [1, 4])
def test_residual_shortcut_is_identity_where_shapes_allow(bottleneck):
    same = conv_block(16, 16, block="residual", bottleneck=bottleneck)
    (residual,) = same
    assert isinstance(residual, Residual) and isinstance(residual.shortcut, nn.Identity)
    # A body that outputs zeros (last BatchNorm scaled to 0) leaves relu(x): the identity added.
    last_bn = residual.body[-1][-1]
    assert isinstance(last_bn, nn.BatchNorm2d)
    with torch.no_grad():
        last_bn.weight.zero_()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(same(x), torch.relu(x))
    for kwargs in ({"in_ch": 8, "out_ch": 16}, {"in_ch": 16, "out_ch": 16, "stride": 2}):
        (projected,) = conv_block(**kwargs, block="residual", bottleneck=bottleneck)
        assert isinstance(projected.shortcut[0], nn.Conv2d)
        assert projected.shortcut[0].kernel_size == (1, 1)


@pytest.mark.parametrize(("name", "identities"), [("strided", 3), ("unpool", 3), ("unet", 0)])
def test_residual_models_use_identity_shortcuts_in_same_shape_stages(name, identities):
    model = tiny(name, block="residual")  # depth 3: three decoder stages keep their width
    shortcuts = [m.shortcut for m in model.modules() if isinstance(m, Residual)]
    assert len(shortcuts) == 1 + 2 * TINY["depth"]  # stem, down, dec
    assert sum(isinstance(s, nn.Identity) for s in shortcuts) == identities


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize(("block", "bottleneck"), VARIANTS)
def test_block_variant_output_shape_and_backward(name, block, bottleneck):
    model = tiny(name, block=block, bottleneck=bottleneck)
    out = model(images())
    assert out.shape == (2, 3, SIZE, SIZE)
    varied(out).logsumexp(dim=1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("bottleneck", [1, 4])
def test_separable_is_cheapest_and_residual_costliest_at_equal_widths(name, bottleneck):
    models = {b: tiny(name, block=b, bottleneck=bottleneck) for b in BLOCKS}
    params = {b: count_params(m) for b, m in models.items()}
    flops = {b: gflops_per_image(m, SIZE) for b, m in models.items()}
    assert params["separable"] < params["plain"] < params["residual"]
    assert flops["separable"] < flops["plain"] < flops["residual"]


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("block", BLOCKS)
def test_bottleneck_reduces_params_and_flops(name, block):
    full, reduced = tiny(name, block=block), tiny(name, block=block, bottleneck=4)
    assert count_params(reduced) < count_params(full)
    assert gflops_per_image(reduced, SIZE) < gflops_per_image(full, SIZE)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_block_params_reach_the_model_from_params_yaml_values(name):
    section = config.ARCH_SECTIONS[name]  # unet_noskip is configured by models.unet
    params = config.validate(
        {"models": {section: {**TINY, "block": "separable", "bottleneck": 2}}}
    ).models
    model = build_model(name, params)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    # bottleneck 2: the stem's 3x3 runs at half of base_width
    assert depthwise[0].in_channels == TINY["base_width"] // 2
    default = build_model(name, config.validate({"models": {section: TINY}}).models)
    assert not any(m.groups > 1 for m in default.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", sorted(set(config.ARCH_SECTIONS.values())))
@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("block", "dense", "Input should be 'plain', 'residual' or 'separable'"),
        ("bottleneck", 0, "greater than or equal to 1"),
        ("bottleneck", 1.5, "valid integer"),
    ],
)
def test_bad_block_params_name_the_key(name, key, value, needle):
    with pytest.raises(ParamsError) as exc:
        config.validate({"models": {name: {key: value}}})
    assert f"models.{name}.{key} = {value!r}" in str(exc.value)
    assert needle in str(exc.value)


def test_conv_block_rejects_bad_values_when_built_directly():
    with pytest.raises(ValueError, match="plain, residual, separable; got 'dense'"):
        conv_block(8, 8, block="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bottleneck must be >= 1"):
        conv_block(8, 8, bottleneck=0)


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("block", ["plain", "residual", "separable"])
def test_fused_inference_model_equals_the_model(name, block):
    """BatchNorms folded into the convolutions: same outputs, no BatchNorm left, original intact."""
    from torch import nn

    from petseg.models.inference import fuse_for_inference

    torch.manual_seed(0)
    section = config.ARCH_SECTIONS[name]
    params = ModelsParams.model_validate({section: {"base_width": 8, "depth": 2, "block": block}})
    model = build_model(name, params)
    model.train()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        model(torch.randn(4, 3, 32, 32))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    fused = fuse_for_inference(model)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0


# ------------------------------------------------------------------------ the skip ablation
def test_skip_ablation_costs_exactly_what_the_unet_costs():
    unet, ablation = tiny("unet"), tiny("unet_noskip")
    assert count_params(ablation) == count_params(unet)
    assert gflops_per_image(ablation, SIZE) == gflops_per_image(unet, SIZE)
    # Configured by models.unet: the two cannot drift apart.
    params = tiny_params(base_width=4)
    assert count_params(build_model("unet_noskip", params)) == count_params(
        build_model("unet", params)
    )


@pytest.mark.parametrize(("name", "skips_matter"), [("unet", True), ("unet_noskip", False)])
def test_only_the_unet_output_depends_on_what_travels_through_its_skips(name, skips_matter):
    model = tiny(name).train()  # train mode: see varied()
    x = images()
    with torch.no_grad():
        before = varied(model(x))
        original = model.skip
        noise = torch.Generator().manual_seed(3)
        # Perturb the encoder features on their way into the skip path only.
        model.skip = lambda f: original(f + torch.randn(f.shape, generator=noise))
        after = model(x)
    assert (not torch.allclose(before, after, atol=1e-5)) == skips_matter

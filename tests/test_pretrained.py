"""Pretrained weights (models.<arch>.pretrained): torch hub's cache through torchvision's own
loading call, a local weights_path, a checked download from a local server, and the errors."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from http_server import closed_port_url, serve

from petseg.config import ENCODERS, ModelsParams
from petseg.errors import DataError, DownloadError
from petseg.models import build_model
from petseg.models import pretrained as pre
from petseg.models.encoders import BACKBONES, weights_of

BACKBONE_NAMES = ENCODERS[1:]


def net(encoder: str, depth: int = 2, **section: object):
    params = ModelsParams.model_validate(
        {"unet": {"depth": depth, "base_width": 8, "encoder": encoder, "pretrained": True,
                  **section}}
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model("unet", params), params.unet


def assert_stages_hold(model, state: dict[str, torch.Tensor]) -> None:
    """Every stage of ``model``'s backbone holds the weights (and BatchNorm statistics) of
    ``state``, a torchvision state dict of the whole network."""
    backbone = model.backbone()
    reference = BACKBONES[backbone.name].build(weights=None)
    reference.load_state_dict(state)
    theirs_all = BACKBONES[backbone.name].stages(reference)[: len(backbone.stages)]
    for mine, theirs in zip(backbone.stages, theirs_all, strict=True):
        for key, value in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[key], value), key


@pytest.fixture
def hub(torch_home, tmp_path, monkeypatch) -> Path:
    """A private copy of the torch_home fixture, set as TORCH_HOME."""
    home = tmp_path / "torch"
    shutil.copytree(torch_home, home)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.mark.parametrize("encoder", BACKBONE_NAMES)
def test_the_official_file_in_torch_hubs_cache_is_loaded_by_the_call_that_would_download_it(
    encoder, hub, monkeypatch, caplog
):
    calls = []
    real = torch.hub.load_state_dict_from_url

    def spy(url, **kwargs):
        calls.append((url, kwargs))
        return real(url, **kwargs)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", spy)
    model, arch = net(encoder)
    with caplog.at_level(logging.WARNING):
        loaded = pre.load_pretrained(model, "unet", arch, progress=False)
    file = hub / "hub" / "checkpoints" / Path(weights_of(encoder).url).name
    assert loaded == pre.LoadedWeights(
        file, hashlib.sha256(file.read_bytes()).hexdigest(), "torch hub cache"
    )
    ((url, kwargs),) = calls
    assert url == weights_of(encoder).url and kwargs["check_hash"] is True
    assert kwargs["model_dir"] == str(file.parent)
    assert_stages_hold(model, torch.load(file, weights_only=True))
    # A stand-in, not the official file: used, with its own hash recorded, and a warning.
    assert "does not start with" in caplog.text and loaded.sha256 in caplog.text


def test_nothing_is_loaded_without_pretrained_or_without_a_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty: a fetch would fail
    random_init, arch = net("resnet18", pretrained=False)
    assert pre.load_pretrained(random_init, "unet", arch) is None
    scratch, arch = net("scratch", pretrained=False)
    assert pre.load_pretrained(scratch, "unet", arch) is None


def test_weights_path_inside_the_weights_folder(torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    folder = tmp_path / "weights"
    folder.mkdir()
    official = torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    copy = folder / official.name
    shutil.copy(official, copy)
    model, arch = net("resnet34", depth=5, weights_path=str(copy))
    loaded = pre.load_pretrained(model, "unet", arch, weights_dir=folder)
    assert (loaded.file, loaded.source) == (copy, "weights_path")
    assert loaded.sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert_stages_hold(model, torch.load(copy, weights_only=True))
    assert not (tmp_path / "empty").exists()  # torch hub was never asked


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("outside", ["models.unet.weights_path = ", "is outside", "move the file into"]),
        ("missing", ["no such file", "resnet18-f37072fd.pth (44.7 MB)",
                     "set models.unet.weights_path to null"]),
        ("garbage", ["not a state dict"]),
        ("a list", ["holds a list, not a state dict"]),
        ("other network", ["models.unet.weights_path = ", "not the resnet18 weights",
                           "ResNet18_Weights.IMAGENET1K_V1"]),
    ],
)  # fmt: skip
def test_a_bad_weights_path_names_the_key_and_the_fix(case, needles, torch_home, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    path = folder / "w.pth"
    if case == "outside":
        path = tmp_path / "w.pth"
        shutil.copy(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth", path)
    elif case == "garbage":
        path.write_bytes(b"not a pickle")
    elif case == "a list":
        torch.save([1, 2], path)
    elif case == "other network":
        shutil.copy(torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth", path)
    model, arch = net("resnet18", weights_path=str(path))
    with pytest.raises(DataError) as exc:
        pre.load_pretrained(model, "unet", arch, weights_dir=folder)
    for needle in needles:
        assert needle in str(exc.value)


def _served(monkeypatch, base: str, name: str) -> None:
    """Backbone resnet18's weights enum, but its file served from ``base``."""
    fake = SimpleNamespace(url=f"{base}/{name}", meta=weights_of("resnet18").meta)
    monkeypatch.setattr(pre, "weights_of", lambda encoder: fake)


def test_a_download_shows_progress_passes_the_hash_check_and_is_cached(
    monkeypatch, tmp_path, capfd
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(7)
    official = tmp_path / "official.pth"
    torch.save(BACKBONES["resnet18"].build(weights=None).state_dict(), official)
    data = official.read_bytes()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # torch hub's naming
    with serve({name: data}) as httpd:
        _served(monkeypatch, httpd.url, name)
        model, arch = net("resnet18")
        loaded = pre.load_pretrained(model, "unet", arch, progress=True)
        assert loaded.source == "download"
        assert loaded.file == tmp_path / "torch" / "hub" / "checkpoints" / name
        assert loaded.file.read_bytes() == data
        assert loaded.sha256 == hashlib.sha256(data).hexdigest()
        assert "100%" in capfd.readouterr().err  # torch hub's progress bar
        assert_stages_hold(model, torch.load(official, weights_only=True))
        again = pre.load_pretrained(net("resnet18")[0], "unet", arch, progress=True)
        assert again.source == "torch hub cache"
        assert len(httpd.state.served(name)) == 1  # downloaded once


def test_a_download_that_fails_the_hash_check_is_deleted(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name = "resnet18-00000000.pth"  # not the hash of what is served
    torch.save(BACKBONES["resnet18"].build(weights=None).state_dict(), tmp_path / "w.pth")
    with serve({name: (tmp_path / "w.pth").read_bytes()}) as httpd:
        _served(monkeypatch, httpd.url, name)
        model, arch = net("resnet18")
        with pytest.raises(DownloadError, match="does not match the hash in its name"):
            pre.load_pretrained(model, "unet", arch, progress=False)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert list(folder.iterdir()) == []  # neither the file nor a partial one


def test_no_file_and_no_network_says_what_to_download_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    base = closed_port_url().rstrip("/")
    _served(monkeypatch, base, "resnet18-f37072fd.pth")
    model, arch = net("resnet18")
    with pytest.raises(DownloadError) as exc:
        pre.load_pretrained(model, "unet", arch, weights_dir=Path("weights"), progress=False)
    message = str(exc.value)
    file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    for needle in (
        "models.unet.pretrained: the resnet18 ImageNet weights are not in torch hub's cache",
        "Connection refused",
        f"download {base}/resnet18-f37072fd.pth (44.7 MB) and put it at {file}",
        "or put it in weights/ and set models.unet.weights_path to it",
    ):
        assert needle in message
    assert "\n" not in message


def test_an_unreadable_cached_file_says_delete_it(hub):
    file = hub / "hub" / "checkpoints" / "mobilenet_v3_large-5c1a4163.pth"
    file.write_bytes(b"\x00" * 64)
    model, arch = net("mobilenet_v3_large")
    with pytest.raises(DataError, match=f"{file}: unreadable .*delete it"):
        pre.load_pretrained(model, "unet", arch, progress=False)

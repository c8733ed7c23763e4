"""Pretrained weights that are not there: train_unet stops naming the file to download, where to
put it and the params key, and runs once the file is where it said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from http_server import closed_port_url

from faults.harness import Project, assert_no_partial, assert_user_error, runs, stage_env

OFFICIAL = "resnet18-f37072fd.pth"
URL = f"https://download.pytorch.org/models/{OFFICIAL}"
PRETRAINED = {"models.unet.encoder": "resnet18", "models.unet.pretrained": True}


@pytest.fixture
def offline(prepared_project: Project, tmp_path: Path) -> Project:
    """The prepared project with an empty torch hub cache and no network: every download goes
    to a proxy where nothing listens (localhost is not proxied)."""
    proxy = closed_port_url()
    proxies = {k: proxy for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    prepared_project.env = stage_env(TORCH_HOME=str(tmp_path / "torch"), **proxies)
    return prepared_project


def test_no_weights_and_no_network_names_the_url_and_the_cache_then_runs_from_it(
    offline: Project, torch_home: Path, tmp_path: Path
) -> None:
    offline.params(PRETRAINED)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    line = assert_user_error(
        offline.run("train_unet"),
        "models.unet.pretrained: the resnet18 ImageNet weights are not in torch hub's cache",
        f"download {URL} (44.7 MB) and put it at {cache / OFFICIAL}",
        "or put it in weights/ and set models.unet.weights_path to it",
    )
    assert "Traceback" not in line
    assert_no_partial(offline, "train_unet")

    shutil.copy(torch_home / "hub" / "checkpoints" / OFFICIAL, cache / OFFICIAL)
    done = offline.run("train_unet")
    assert done.rc == 0, done.stderr[-4000:]
    metrics = json.loads((offline.root / "metrics/train/unet.json").read_text())
    sha = metrics["encoder_weights_sha256"]
    (run,) = [r for r in runs(offline) if r.info.status == "FINISHED"]
    assert run.data.tags["petseg.encoder_weights.sha256"] == sha
    assert run.data.tags["petseg.encoder_weights.source"] == "torch hub cache"


@pytest.mark.parametrize(
    ("where", "needles"),
    [
        ("elsewhere/w.pth", ("models.unet.weights_path = elsewhere/w.pth is outside weights/",)),
        (
            "weights/absent.pth",
            ("models.unet.weights_path = weights/absent.pth: no such file", URL),
        ),
    ],
)
def test_a_weights_path_must_be_a_file_in_the_weights_folder(
    offline: Project, torch_home: Path, where: str, needles: tuple[str, ...]
) -> None:
    if where.startswith("elsewhere"):
        (offline.root / "elsewhere").mkdir()
        shutil.copy(torch_home / "hub" / "checkpoints" / OFFICIAL, offline.root / where)
    offline.params({**PRETRAINED, "models.unet.weights_path": where})
    assert_user_error(offline.run("train_unet"), *needles)
    assert_no_partial(offline, "train_unet")
    if where.startswith("weights/"):
        return
    (offline.root / "weights").mkdir()
    shutil.copy(torch_home / "hub" / "checkpoints" / OFFICIAL, offline.root / "weights" / "w.pth")
    offline.params({**PRETRAINED, "models.unet.weights_path": "weights/w.pth"})
    done = offline.run("train_unet")
    assert done.rc == 0, done.stderr[-4000:]
    (run,) = [r for r in runs(offline) if r.info.status == "FINISHED"]
    assert run.data.tags["petseg.encoder_weights.source"] == "weights_path"

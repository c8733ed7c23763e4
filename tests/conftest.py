"""Shared fixtures. Real Oxford-IIIT Pet files are read in place from ../shared/data; pages are
opened in headless Chromium; end-to-end tests run on one tiny configuration (TINY)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from browser import launch

from petseg.config import ModelsParams
from petseg.preset import apply_preset

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ARCHS = tuple(ModelsParams.model_fields)

# The one tiny configuration of the end-to-end tests, as dotted params.yaml keys (a preset): the
# offline synthetic source at the smallest sizes that still exercise every stage, so that the
# whole pipeline runs in seconds of training. Read-only: a test extends it with {**TINY, key: v}.
TINY: Mapping[str, Any] = MappingProxyType(
    {
        "data.source": "synthetic",
        "data.synthetic.n_trainval": 40,
        "data.synthetic.n_test": 12,
        "data.synthetic.min_size": 48,
        "data.synthetic.max_size": 64,
        "preprocess.image_size": 32,
        "preprocess.workers": 1,
        **{f"models.{arch}.depth": 2 for arch in ARCHS},
        **{f"models.{arch}.base_width": 8 for arch in ARCHS},
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.lr": 0.01,  # two epochs: a high rate so that the networks learn something
        "train.threads": 1,  # tests share the CPU cores with each other and with parallel runs
        "tracking.system_metrics": False,
        "evaluate.n_examples": 4,
        "evaluate.cost_rounds": 3,
    }
)


def tiny_section(name: str) -> dict[str, Any]:
    """TINY's keys under ``name`` as nested params, e.g. ``{"unet": {"depth": 2, ...}, ...}``."""
    nested: dict[str, Any] = {}
    for dotted, value in TINY.items():
        section, *path, key = dotted.split(".")
        if section == name:
            node = nested
            for part in path:
                node = node.setdefault(part, {})
            node[key] = value
    return nested


def git_copy(dest: Path) -> Path:
    """The tracked files of this checkout, as they are in the working tree, committed in a new
    repository at ``dest`` on branch main: what a fresh clone holds."""
    import os
    import shutil
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, files.stdout.split(b"\0")):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *cmd], cwd=dest, check=True, capture_output=True)
    return dest


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(
            f"real test data {path} is absent (it lives beside the project in ../shared/data)"
        )
    return path


@pytest.fixture(scope="session")
def pets_sample() -> Path:
    """228 real pairs in the official layout (read-only)."""
    return _shared("oxford-pets-sample")


@pytest.fixture(scope="session")
def pets_quirks() -> Path:
    """Two real oddities: Abyssinian_34.jpg is a GIF, Abyssinian_5.jpg an RGBA PNG (read-only)."""
    return _shared("oxford-pets-quirks")


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium driven by Playwright (tests/browser.py); skips without them."""
    with launch() as browser:
        yield browser


@pytest.fixture
def tiny_params() -> dict[str, Any]:
    """A fresh copy of TINY, free to change."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_preset() -> Callable[..., Path]:
    """``tiny_preset(project, extra)`` writes TINY plus ``extra`` as ``project/tiny.yaml`` and
    applies it to ``project/params.yaml``, as `make real` applies presets/real.yaml."""

    def write_and_apply(project: Path, extra: Mapping[str, Any] | None = None) -> Path:
        preset = project / "tiny.yaml"
        preset.write_text(yaml.safe_dump({**TINY, **(extra or {})}, sort_keys=False))
        apply_preset(preset, project / "params.yaml")
        return preset

    return write_and_apply


@dataclass(frozen=True)
class TinyTrained:
    """One network trained on TINY: its data, model file, metrics and logged MLflow model."""

    raw: Path  # data/raw: the synthetic set in the official layout
    prepared: Path  # data/prepared at TINY's preprocess.image_size
    model: Path  # models/unet.pt
    metrics: Path  # metrics/train/unet.json
    tracking_uri: str  # the sqlite store of its MLflow run
    run_id: str  # the run, with its logged pyfunc (tracking.served.model_uri)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> TinyTrained:
    """unet trained with TINY (synthetic data, 32 px, 2 epochs) and logged with its MLflow model:
    what predict, the served model and the ONNX export are tested on."""
    from mlflow import MlflowClient  # imported here: most tests never need training or MLflow

    from petseg.config import PreprocessParams, SyntheticParams, TrackingParams, TrainParams
    from petseg.data.preprocess import preprocess
    from petseg.data.synthetic import generate
    from petseg.train import TrainPaths, train

    root = tmp_path_factory.mktemp("tiny-trained")
    raw, prepared = root / "data" / "raw", root / "data" / "prepared"
    raw.mkdir(parents=True)
    generate(raw, SyntheticParams(**tiny_section("data")["synthetic"]), progress=False)
    preprocess(raw, prepared, PreprocessParams(**tiny_section("preprocess")), progress=False)
    paths = TrainPaths(
        prepared, root / "models/unet.pt", root / "metrics/train/unet.json",
        root / "plots/train/unet.csv", root / "checkpoints/unet",
    )  # fmt: skip
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = TrackingParams(**{**tiny_section("tracking"), "experiment": "tiny"})
    arch = ModelsParams.model_validate(tiny_section("models")).unet
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        train("unet", TrainParams(**tiny_section("train")), arch, tracking, paths, progress=False)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    return TinyTrained(raw, prepared, paths.model, paths.metrics, uri, run.info.run_id)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a stand-in for every backbone's official weights file,
    under its official name (e.g. hub/checkpoints/resnet18-f37072fd.pth): torchvision's network
    with seeded random weights, since the real files cannot be downloaded here. Their SHA-256
    does not start with the hash in the name, which torch hub checks only when it downloads
    (petseg records the hash and warns). Read-only: copy it to change it."""
    import torch

    from petseg.models.encoders import BACKBONES, weights_of
    from petseg.models.pretrained import hub_file

    home = tmp_path_factory.mktemp("torch-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        for i, (name, spec) in enumerate(BACKBONES.items()):
            torch.manual_seed(100 + i)
            file = hub_file(weights_of(name).url)
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(spec.build(weights=None).state_dict(), file)
    return home

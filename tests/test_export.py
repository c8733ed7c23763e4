"""``python -m petseg.export --onnx``: the graph onnxruntime runs gives PyTorch's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from petseg.config import ARCH_SECTIONS, ModelsParams
from petseg.data.augment import normalize, to_float
from petseg.export import ATOL, export_onnx
from petseg.models import ARCHITECTURES, build_model, load_model, save_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a dependency: pip install -e .")
onnx = pytest.importorskip("onnx", reason="onnx is a dependency: pip install -e .")
ROOT = Path(__file__).resolve().parents[1]


def _untrained(arch: str, root: Path, encoder: str = "scratch") -> Path:
    """A model file of ``arch`` at depth 3, with BatchNorm statistics that are not the identity."""
    section = {"depth": 3, "base_width": 8, "encoder": encoder}
    params = ModelsParams.model_validate({ARCH_SECTIONS[arch]: section})
    torch.manual_seed(0)
    model = build_model(arch, params)
    with torch.no_grad():
        model(torch.randn(4, 3, 48, 48) * 2 + 1)  # train mode: the running statistics move
        if encoder != "scratch":  # weights normalised otherwise than the pipeline: in the graph
            model.backbone().input_shift.fill_(0.3)
    path = root / f"{arch}.pt"
    save_model(path, arch, params.of(arch), 48, model.state_dict())
    return path


def _logits(model_path: Path, images: np.ndarray) -> np.ndarray:
    model, _ = load_model(model_path)
    with torch.no_grad():
        return model(normalize(to_float(torch.from_numpy(images)))).numpy()


def _check_parity(model_path: Path, onnx_path: Path, sizes: list[tuple[int, int]]) -> None:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for h, w in sizes:
        for n in (1, 2):
            images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            (got,) = session.run(["logits"], {"images": images})
            assert got.shape == (n, 3, h, w)
            assert np.abs(got - _logits(model_path, images)).max() <= ATOL


def test_onnx_of_a_trained_network_matches_pytorch_with_its_metadata(tiny_trained, tmp_path):
    out = tmp_path / "unet.onnx"
    assert export_onnx(tiny_trained.model, out) <= ATOL
    _check_parity(tiny_trained.model, out, [(32, 32), (44, 20)])  # two sizes, two batches
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["network"] == "unet"
    assert json.loads(meta["classes"]) == ["pet", "background", "border"]
    assert json.loads(meta["training_size"]) == [32, 32]
    assert json.loads(meta["normalisation"])["std"] == [0.229, 0.224, 0.225]
    assert "multiples of 4" in meta["input"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_onnx_matches_pytorch_for_every_architecture(arch, tmp_path):
    path = _untrained(arch, tmp_path)
    export_onnx(path, tmp_path / f"{arch}.onnx")
    _check_parity(path, tmp_path / f"{arch}.onnx", [(48, 48), (40, 72)])


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "mobilenet_v3_large"])
def test_onnx_matches_pytorch_for_every_backbone(encoder, tmp_path):
    path = _untrained("unet", tmp_path, encoder)
    export_onnx(path, tmp_path / "unet.onnx")
    _check_parity(path, tmp_path / "unet.onnx", [(48, 48), (40, 72)])


def test_export_of_a_missing_model_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    cmd = [sys.executable, "-m", "petseg.export", "--model", str(tmp_path / "m.pt"), "--onnx"]
    proc = subprocess.run([*cmd, str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == f"error: {tmp_path / 'm.pt'} not found: run its train stage (dvc repro)"
    )
    assert not out.exists()


def test_a_parity_failure_writes_nothing(tiny_trained, tmp_path):
    from petseg.export import ExportError

    out = tmp_path / "unet.onnx"
    with pytest.raises(ExportError, match=r"not written: .*differ .* by .*report it"):
        export_onnx(tiny_trained.model, out, atol=-1.0)  # no difference passes a negative bound
    assert not out.exists()

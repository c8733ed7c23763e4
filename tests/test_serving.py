"""The MLflow model training logs: its logic (petseg.serving), the pyfunc loaded back at several
sizes, and a real ``mlflow models serve`` answering an HTTP request with a mask."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg import predict, serving
from petseg.data.oxford import decode_rgb
from petseg.tracking import served


@pytest.fixture(scope="module")
def segmenter(tiny_trained):
    return serving.load(tiny_trained.model)


@pytest.fixture
def logged(tiny_trained, monkeypatch):
    """The pyfunc of the tiny model's run, loaded from its MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_trained.tracking_uri)
    return served.load_logged_model(tiny_trained.run_id, Path.cwd())


def _photo(pets_quirks: Path) -> np.ndarray:
    image, _, _ = decode_rgb(pets_quirks / "images" / "Abyssinian_34.jpg", None)  # a GIF
    return image


def test_one_image_a_list_or_a_batch_give_class_maps_at_their_sizes(segmenter):
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (21, 35, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (2, 40, 24, 3), dtype=np.uint8)
    assert serving.predict(segmenter, serving.as_model_input(one)).shape == (1, 21, 35)
    assert serving.predict(segmenter, serving.as_model_input(batch)).shape == (2, 40, 24)
    ragged = serving.predict(segmenter, serving.as_model_input([one, batch[0]]))
    assert ragged.dtype == object and [m.shape for m in ragged] == [(21, 35), (40, 24)]
    out = serving.predict(segmenter, batch, probabilities=True)
    probs = out["probabilities"]
    assert probs.shape == (2, 40, 24, 3) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    assert np.array_equal(out["classes"], probs.argmax(-1))
    assert set(np.unique(out["classes"])) <= {0, 1, 2}


def test_a_served_input_that_is_not_rgb_uint8_says_how_to_fix_it(segmenter):
    with pytest.raises(ValueError, match=r"image 0: expected RGB uint8 .*convert it to RGB"):
        serving.predict(segmenter, np.zeros((1, 8, 8, 3), np.float32))
    grey = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)]
    with pytest.raises(ValueError, match=r"image 1: .*\(8, 8\)"):
        serving.predict(segmenter, serving.as_model_input(grey))


def test_the_served_model_and_predict_agree(tiny_trained, segmenter, pets_quirks, tmp_path):
    photo = pets_quirks / "images" / "Abyssinian_34.jpg"  # not a JPEG: no reduced-scale decode
    predict.main([str(photo), "--model", str(tiny_trained.model), "--out", str(tmp_path)])
    trimap = np.asarray(Image.open(tmp_path / "trimaps" / "Abyssinian_34.png"))
    served = serving.predict(segmenter, serving.as_model_input(_photo(pets_quirks)))
    assert np.array_equal(served[0] + 1, trimap)


def test_the_logged_pyfunc_predicts_at_three_sizes(tiny_trained, logged):
    rng = np.random.default_rng(1)
    for shape in [(1, 37, 53, 3), (2, 64, 48, 3), (1, 200, 120, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = logged.predict(images)
        assert labels.shape == shape[:3] and labels.dtype == np.uint8
    spec = logged.metadata.get_input_schema().inputs[0]
    assert spec.shape == (-1, -1, -1, 3) and spec.type == np.dtype(np.uint8)
    meta = logged.metadata.metadata
    assert meta["network"] == "unet" and meta["classes"] == ["pet", "background", "border"]
    assert meta["training_size"] == [32, 32]
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    digest = hashlib.md5(tiny_trained.model.read_bytes()).hexdigest()
    assert meta["model_file"] == {
        "name": "unet.pt",
        "md5": digest,
        "sha256": hashlib.sha256(tiny_trained.model.read_bytes()).hexdigest(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_photo_with_its_mask(tiny_trained, logged, pets_quirks):
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn by name
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tiny_trained.tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        str(bin_dir / "mlflow"), "models", "serve",
        "-m", served.model_uri(tiny_trained.run_id, Path.cwd()),
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, "mlflow models serve exited"
                assert time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(0.5)
        photo = _photo(pets_quirks)
        answer = _post(f"{url}/invocations", {"inputs": [photo.tolist()]})
        mask = np.array(answer["predictions"])
        assert mask.shape == (1, *photo.shape[:2])
        assert np.array_equal(mask, logged.predict(photo[None]))
        both = _post(
            f"{url}/invocations", {"inputs": [photo.tolist()], "params": {"probabilities": True}}
        )["predictions"]
        assert np.array(both["probabilities"]).shape == (1, *photo.shape[:2], 3)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

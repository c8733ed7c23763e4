"""Fine-tuning a pretrained encoder: frozen first (weights and BatchNorm statistics), then trained
at train.encoder_lr_mult x the learning rate; the weights' hash in the metrics and in MLflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_section

import petseg.train as train_mod
from petseg.config import (
    ModelsParams,
    PreprocessParams,
    SyntheticParams,
    TrackingParams,
    TrainParams,
)
from petseg.data.preprocess import preprocess
from petseg.data.synthetic import generate
from petseg.models import build_model
from petseg.optim import make_optimizer, make_scheduler
from petseg.train import TrainPaths, train

TINY_TRAIN = tiny_section("train")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "raw").mkdir()
    synthetic = SyntheticParams(n_trainval=40, n_test=8, min_size=48, max_size=64)
    generate(root / "raw", synthetic, progress=False)
    preprocess(root / "raw", root / "prepared", PreprocessParams(image_size=32, workers=1), False)
    return root / "prepared"


def resnet_unet(**section: object):
    params = ModelsParams.model_validate(
        {"unet": {"depth": 2, "base_width": 8, "encoder": "resnet18", **section}}
    )
    torch.manual_seed(0)
    return build_model("unet", params), params.unet


def lrs(optimizer: torch.optim.Optimizer) -> dict[str, set[float]]:
    out: dict[str, set[float]] = {}
    for group in optimizer.param_groups:
        out.setdefault(group["name"], set()).add(group["lr"])
    return out


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_the_encoder_follows_the_schedule_at_its_multiple(schedule):
    model, _ = resnet_unet()
    p = TrainParams(lr=0.01, schedule=schedule, encoder_lr_mult=0.25)
    optimizer = make_optimizer(model, p, model.backbone())
    assert [g["name"] for g in optimizer.param_groups] == ["network"] * 2 + ["encoder"] * 2
    grouped = {id(q) for g in optimizer.param_groups[2:] for q in g["params"]}
    assert grouped == {id(q) for q in model.backbone().parameters()}
    scheduler = make_scheduler(optimizer, p, total_steps=20)
    for _ in range(20):
        now = lrs(optimizer)
        (network,), (encoder,) = now["network"], now["encoder"]
        assert encoder == pytest.approx(0.25 * network, rel=1e-9)
        optimizer.step()
        scheduler.step()


def test_one_adam_step_moves_each_part_by_its_own_learning_rate():
    # Adam's first step is lr x g / (|g| + eps), about lr for every weight with a gradient.
    model, _ = resnet_unet()
    p = TrainParams(lr=1e-3, weight_decay=0.0, schedule="constant", encoder_lr_mult=0.1)
    optimizer = make_optimizer(model, p, model.backbone())
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    moved = {n: (q.detach() - before[n]).abs().median().item() for n, q in model.named_parameters()}
    encoder = [v for n, v in moved.items() if n.startswith("encoder.")]
    network = [v for n, v in moved.items() if not n.startswith("encoder.")]
    assert max(encoder) == pytest.approx(1e-4, rel=0.05)
    assert max(network) == pytest.approx(1e-3, rel=0.05)


def test_without_pretrained_weights_every_parameter_is_one_group_pair():
    model, _ = resnet_unet()
    optimizer = make_optimizer(model, TrainParams(encoder_lr_mult=0.1))
    assert [g["name"] for g in optimizer.param_groups] == ["network", "network"]


def _snapshot(state) -> dict:
    model = state.model
    encoder = {k: v.detach().clone() for k, v in model.backbone().state_dict().items()}
    rest = {
        k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")
    }
    grads = [q.grad is not None for q in model.backbone().parameters()]
    return {"encoder": encoder, "rest": rest, "lrs": lrs(state.optimizer), "grads": grads}


def _same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_the_encoder_is_frozen_then_fine_tuned_and_its_hash_recorded(
    prepared, torch_home, tmp_path, monkeypatch
):
    from mlflow import MlflowClient  # the test reads the store; src goes through tracking

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    snaps = []
    real = train_mod.run_epoch

    def recorded(loop, state, epoch):
        if not snaps:
            snaps.append(_snapshot(state))
        row = real(loop, state, epoch)
        snaps.append(_snapshot(state))
        return row

    monkeypatch.setattr(train_mod, "run_epoch", recorded)
    _, arch = resnet_unet(pretrained=True)
    p = TrainParams(
        **{**TINY_TRAIN, "epochs": 4, "freeze_encoder_epochs": 2, "encoder_lr_mult": 0.1}
    )
    paths = TrainPaths(
        prepared, tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "ckpt"
    )
    track = TrackingParams(experiment="finetune", system_metrics=False, log_model=False)
    result = train("unet", p, arch, track, paths, progress=False)

    file = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    official = torch.load(file, weights_only=True)
    stage1 = {"0.0.weight": "conv1.weight", "0.1.running_mean": "bn1.running_mean",
              "0.1.running_var": "bn1.running_var", "0.1.weight": "bn1.weight"}  # fmt: skip
    for mine, theirs in stage1.items():
        assert torch.equal(snaps[0]["encoder"][f"stages.{mine}"], official[theirs])
    keys = list(snaps[0]["encoder"])
    constant = ("input_scale", "input_shift", "num_batches_tracked")  # normalisation; a counter
    params = [k for k in keys if not k.endswith(("running_mean", "running_var", *constant))]
    stats = [k for k in keys if k.endswith(("running_mean", "running_var"))]
    assert params and stats
    for epoch in (1, 2):  # frozen: the encoder as loaded, its BatchNorm statistics too
        assert _same(snaps[epoch]["encoder"], snaps[0]["encoder"], keys)
        assert not any(snaps[epoch]["grads"])
        assert not _same(snaps[epoch]["rest"], snaps[epoch - 1]["rest"], snaps[0]["rest"])
    for epoch in (3, 4):  # trained: every weight and statistic moves
        before, after = snaps[epoch - 1]["encoder"], snaps[epoch]["encoder"]
        assert [k for k in params + stats if torch.equal(before[k], after[k])] == []
        assert _same(before, after, ["input_scale", "input_shift"])
        assert not _same(snaps[epoch]["rest"], snaps[epoch - 1]["rest"], snaps[0]["rest"])
    for snap in snaps[1:]:  # the encoder at a tenth of the rest's rate, all along
        (network,), (encoder,) = snap["lrs"]["network"], snap["lrs"]["encoder"]
        assert encoder == pytest.approx(0.1 * network, rel=1e-9)

    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    assert result.encoder_weights_sha256 == sha
    assert json.loads(paths.metrics.read_text())["encoder_weights_sha256"] == sha
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    assert run.data.tags["petseg.encoder_weights.sha256"] == sha
    assert run.data.tags["petseg.encoder_weights.file"] == file.name
    assert run.data.tags["petseg.encoder_weights.source"] == "torch hub cache"
    assert run.data.params["models.unet.encoder"] == "resnet18"
    assert run.data.params["models.unet.pretrained"] == "True"
    assert run.data.params["train.freeze_encoder_epochs"] == "2"


def test_a_network_without_pretrained_weights_records_no_hash(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty: nothing may be fetched
    _, arch = resnet_unet()
    p = TrainParams(**{**TINY_TRAIN, "epochs": 1, "freeze_encoder_epochs": 1})
    paths = TrainPaths(
        prepared, tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "ckpt"
    )
    result = train("unet", p, arch, TrackingParams(enabled=False), paths, progress=False)
    assert result.encoder_weights_sha256 is None
    assert "encoder_weights_sha256" not in json.loads(paths.metrics.read_text())
    assert not (tmp_path / "torch").exists()

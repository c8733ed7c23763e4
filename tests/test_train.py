"""Training end to end on tiny synthetic data: files, MLflow server, resume, DDP, divergence."""

from __future__ import annotations

import csv
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
import torch
import yaml
from conftest import tiny_section

from petseg import config
from petseg.config import ENCODERS as ENCODER_NAMES
from petseg.config import ModelsParams, SyntheticParams, TrackingParams, TrainParams
from petseg.data.prepared import load_split
from petseg.data.preprocess import preprocess
from petseg.data.synthetic import generate
from petseg.engine import DivergenceError, Feed, evaluate
from petseg.metrics import mean_iou
from petseg.models import ARCHITECTURES, load_model
from petseg.results import TRAIN_CURVE_COLUMNS as CSV_COLUMNS
from petseg.tracking import served
from petseg.train import TrainPaths, train

ROOT = Path(__file__).resolve().parents[1]
TINY_MODELS = tiny_section("models")
TINY_TRAIN = tiny_section("train")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny synthetic set (32 px) through the real generator and preprocess."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "raw"
    raw.mkdir()
    generate(
        raw, SyntheticParams(n_trainval=40, n_test=8, min_size=48, max_size=64), progress=False
    )
    params = config.PreprocessParams(image_size=32, val_fraction=0.2, workers=1)
    preprocess(raw, root / "prepared", params, progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, started and stopped by the test."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _paths(root: Path, arch: str, prepared: Path) -> TrainPaths:
    return TrainPaths(
        prepared=prepared,
        model=root / "models" / f"{arch}.pt",
        metrics=root / "metrics" / f"{arch}.json",
        plot=root / "plots" / f"{arch}.csv",
        checkpoint_dir=root / "checkpoints" / arch,
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_each_architecture_trains_and_logs_to_mlflow(
    prepared, mlflow_server, tmp_path, monkeypatch
):
    from mlflow import MlflowClient  # the test inspects the store; src uses petseg.tracking only

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    models = ModelsParams.model_validate(TINY_MODELS)
    track = TrackingParams(experiment="test-train", system_metrics=False)
    for arch in ARCHITECTURES:
        paths = _paths(tmp_path, arch, prepared)
        result = train(
            arch, TrainParams(**TINY_TRAIN), models.of(arch), track, paths, "synthetic",
            progress=False,
        )  # fmt: skip
        assert paths.model.exists() and paths.metrics.exists()
        assert not paths.checkpoint_dir.joinpath("last.pt").exists()  # removed once finished
        rows = _read_csv(paths.plot)
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert all(tuple(r) == CSV_COLUMNS and all(r.values()) for r in rows)
        saved = json.loads(paths.metrics.read_text())
        assert saved == json.loads(json.dumps(result.model_dump(exclude_none=True)))
        assert saved["params"] > 0 and saved["gflops_per_image"] > 0
        best = max(float(r["val_miou"]) for r in rows)
        assert saved["best_val_miou"] == pytest.approx(best, abs=1e-5)
        model, info = load_model(paths.model)
        assert info.arch == arch and model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("test-train")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(ARCHITECTURES)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["data.source"] == "synthetic"
        assert run.data.params["train.epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val/miou")
        assert sorted(m.step for m in history) == [1, 2]
        logged = served.load_logged_model(run.info.run_id, ROOT)  # the servable pyfunc
        assert logged.metadata.metadata["network"] == run.info.run_name
        images = np.zeros((3, 40, 24, 3), np.uint8)  # any size: it runs at the training size
        assert logged.predict(images).shape == (3, 40, 24)


def _stage_cmd(arch: str, work: Path, prepared: Path) -> list[str]:
    return [
        sys.executable, str(ROOT / "stages/train.py"), "--arch", arch,
        "--params", str(work / "params.yaml"), "--prepared", str(prepared),
        "--model", "models/m.pt", "--metrics", "metrics.json", "--plot", "plot.csv",
        "--checkpoints", "ckpt",
    ]  # fmt: skip


# Every encoder of models.unet: its own, and each backbone from (stand-ins for) its pretrained
# weights in the torch_home fixture, frozen for the first epoch (train.freeze_encoder_epochs).
ENCODERS = {
    "scratch": {},
    **{e: {"encoder": e, "pretrained": True} for e in ENCODER_NAMES[1:]},
}


def _workdir(tmp_path: Path, name: str, train_over: dict, unet_over: dict | None = None) -> Path:
    work = tmp_path / name
    work.mkdir()
    params = {
        "models": {"unet": {"depth": 2, "base_width": 16, **(unet_over or {})}},
        "train": {**TINY_TRAIN, **train_over},
        "tracking": {"experiment": "resume", "system_metrics": False, "log_model": False},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def _env(torch_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # each work dir gets its own sqlite store
    if torch_home is not None:
        env["TORCH_HOME"] = str(torch_home)
    return env


def _runs(work: Path) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resume")
    return client, client.search_runs([exp.experiment_id])


TIMING_KEYS = {"train_seconds", "train_images_per_s"}


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ENCODERS)
def test_killed_training_resumes_to_the_same_result(prepared, tmp_path, torch_home, encoder):
    # With a weight average: its state must survive the kill too; a pretrained encoder is frozen
    # in epoch 1, so the resumed run crosses the end of the frozen epochs.
    over = {"epochs": 3, "augment": {"rotate": 15.0}, "ema_epochs": 1.0,
            "freeze_encoder_epochs": 1, "encoder_lr_mult": 0.1}  # fmt: skip
    env = _env(torch_home)
    full = _workdir(tmp_path, "full", over, ENCODERS[encoder])
    subprocess.run(_stage_cmd("unet", full, prepared), cwd=full, env=env, check=True)

    cut = _workdir(tmp_path, "cut", over, ENCODERS[encoder])
    proc = subprocess.Popen(
        _stage_cmd("unet", cut, prepared), cwd=cut, env=env, stderr=subprocess.DEVNULL
    )
    ckpt = cut / "ckpt" / "last.pt"
    while not ckpt.exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "metrics.json").exists(), "training finished before it could be killed"
    assert torch.load(ckpt, weights_only=True)["epoch"] < 3

    subprocess.run(_stage_cmd("unet", cut, prepared), cwd=cut, env=env, check=True)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {
        k: v for k, v in b.items() if k not in TIMING_KEYS
    }
    quality = [c for c in CSV_COLUMNS if c not in ("epoch_seconds", "images_per_s")]
    rows_a, rows_b = _read_csv(full / "plot.csv"), _read_csv(cut / "plot.csv")
    assert [[r[c] for c in quality] for r in rows_a] == [[r[c] for c in quality] for r in rows_b]
    client, runs = _runs(cut)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/miou")]
    assert sorted(steps) == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ENCODERS)
def test_ddp_two_processes_stay_in_sync_and_reduce_metrics(prepared, tmp_path, torch_home, encoder):
    # A pretrained encoder is frozen in epoch 1 and trained in epoch 2: DDP must then reduce its
    # gradients too, or the replicas drift apart.
    over = {"epochs": 2, "batch_size": 4, "device": "cpu", "freeze_encoder_epochs": 1}  # gloo
    work = _workdir(tmp_path, "ddp", over, ENCODERS[encoder])
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        *_stage_cmd("unet", work, prepared)[1:],
    ]  # fmt: skip
    subprocess.run(cmd, cwd=work, env=_env(torch_home), check=True, timeout=300)
    result = json.loads((work / "metrics.json").read_text())
    assert result["world_size"] == 2
    assert ("encoder_weights_sha256" in result) == (encoder != "scratch")
    sums = result["weights_checksum_per_rank"]
    assert len(sums) == 2 and sums[0] == sums[1]
    # Rank 0's validation metrics cover the whole val split (both ranks' shards, summed).
    model, _ = load_model(work / "models/m.pt")
    val = load_split(prepared, "val", mmap=False)
    bf16 = result["precision"] == "bf16-autocast"  # validate exactly as training did
    cm, _, n = evaluate(
        model, torch.from_numpy(val.images), torch.from_numpy(val.masks),
        torch.arange(len(val)), Feed(torch.device("cpu"), True), 4, 3, None, bf16,
    )  # fmt: skip
    row = _read_csv(work / "plot.csv")[result["best_epoch"] - 1]  # the saved epoch's
    assert n == len(val)
    assert float(row["val_miou"]) == pytest.approx(mean_iou(cm), rel=1e-5)
    _, runs = _runs(work)
    assert len(runs) == 1  # only rank 0 talks to MLflow


def test_divergence_names_epoch_and_step_and_writes_no_model(prepared, tmp_path, monkeypatch):
    import petseg.train as train_mod

    real = train_mod.make_loss

    def exploding(*args):
        loss_fn, calls = real(*args), []

        def fn(logits, target):
            calls.append(1)
            loss = loss_fn(logits, target)
            return loss * float("nan") if len(calls) == 2 else loss

        return fn

    monkeypatch.setattr(train_mod, "make_loss", exploding)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = _paths(tmp_path, "strided", prepared)
    track = TrackingParams(experiment="diverge", system_metrics=False, log_model=False)
    arch = ModelsParams.model_validate(TINY_MODELS).strided
    with pytest.raises(DivergenceError, match=r"epoch 1, step 2/\d+.*lower train\.lr"):
        train("strided", TrainParams(**TINY_TRAIN), arch, track, paths, progress=False)
    assert not paths.model.exists() and not paths.metrics.exists()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diverge")
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FAILED"]


def test_stage_rejects_bad_params_with_one_line(prepared, tmp_path):
    work = _workdir(tmp_path, "bad", {"batch_size": 0})
    proc = subprocess.run(
        _stage_cmd("unet", work, prepared), cwd=work, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "train.batch_size = 0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (work / "models").exists()


def test_stage_rejects_a_bad_compile_value_with_one_line(prepared, tmp_path):
    work = _workdir(tmp_path, "bad", {"compile": "yes"})
    proc = subprocess.run(
        _stage_cmd("unet", work, prepared), cwd=work, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "train.compile = 'yes' is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compile_without_a_cpp_compiler_is_one_error_line(prepared, tmp_path):
    work = _workdir(tmp_path, "nocxx", {"compile": True})
    env = {**_env(), "CXX": str(tmp_path / "no-such-g++")}  # where inductor looks first
    proc = subprocess.run(
        _stage_cmd("unet", work, prepared), cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.compile = true needs a C++ compiler" in errors[0]
    assert "set train.compile: false" in errors[0] and "Traceback" not in proc.stderr
    assert not (work / "models").exists()


def test_image_size_not_divisible_by_depth_is_a_params_error(prepared, tmp_path):
    work = _workdir(tmp_path, "deep", {})
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["models"]["unet"]["depth"] = 6  # 32 px is not divisible by 64
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        _stage_cmd("unet", work, prepared), cwd=work, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "models.unet.depth = 6" in proc.stderr and "preprocess.image_size is 32" in proc.stderr


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_scheduler_constant_is_flat_and_the_others_warm_up(schedule):
    from petseg.optim import make_scheduler

    params = TrainParams(lr=1e-3, schedule=schedule, warmup_fraction=0.2)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=params.lr)
    scheduler = make_scheduler(optimizer, params, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "constant":  # the plain-Adam baseline: lr from the first step to the last
        assert lrs == [pytest.approx(1e-3)] * 20
    else:
        assert lrs[0] < 0.5e-3 and max(lrs) == pytest.approx(1e-3, rel=0.05) and lrs[-1] < 1e-4


def test_torchrun_with_one_process_takes_the_distributed_path(monkeypatch):
    """Under torchrun even one process starts a process group and DDP (nccl on one GPU)."""
    import torch.distributed as dist

    from petseg.runtime import setup_runtime

    env = {"TORCHELASTIC_RUN_ID": "t", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    env |= {"LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rt = setup_runtime(TrainParams(device="cpu", threads=1))
    try:
        assert rt.distributed and rt.world == 1 and dist.get_backend() == "gloo"
    finally:
        dist.destroy_process_group()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert not setup_runtime(TrainParams(device="cpu", threads=1)).distributed


def test_more_processes_than_gpus_is_a_params_error(monkeypatch):
    from petseg.device import pick_device
    from petseg.errors import ParamsError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda", "train.device", 0) == torch.device("cuda", 0)
    with pytest.raises(ParamsError, match=r"LOCAL_RANK=1 .* 1 CUDA device.*--nproc-per-node"):
        pick_device("auto", "train.device", 1)


def test_weight_average_is_what_is_validated_and_saved(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    track = TrackingParams(experiment="ema", system_metrics=False, log_model=False)
    arch = ModelsParams.model_validate(TINY_MODELS).unet
    val = load_split(prepared, "val", mmap=False)
    best = {}
    for ema in (0.0, 1.0):
        paths = _paths(tmp_path / f"ema{ema:g}", "unet", prepared)
        params = TrainParams(**{**TINY_TRAIN, "ema_epochs": ema})
        result = train("unet", params, arch, track, paths, progress=False)
        model, _ = load_model(paths.model)
        cm, _, _ = evaluate(
            model, torch.from_numpy(val.images), torch.from_numpy(val.masks),
            torch.arange(len(val)), Feed(torch.device("cpu"), True), 8, 3, None,
            result.precision == "bf16-autocast",
        )  # fmt: skip
        # The saved weights are the ones whose validation picked the best epoch.
        assert mean_iou(cm) == pytest.approx(result.best_val_miou, rel=1e-5)
        best[ema] = result.best_val_miou
    assert best[0.0] != best[1.0]


def test_weight_average_decay_follows_the_horizon_in_epochs():
    from petseg.optim import weight_average

    assert weight_average(torch.nn.Linear(1, 1), 0.0, 10) is None
    model = torch.nn.Linear(1, 1, bias=False)
    ema = weight_average(model, 2.0, 10)  # 20 steps: decay 0.95
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.update_parameters(model)  # the first update copies
        model.weight.fill_(3.0)
        ema.update_parameters(model)
    assert ema.module.weight.item() == pytest.approx(0.95 * 1.0 + 0.05 * 3.0)


def test_the_skip_ablation_trains_from_the_unet_section_and_loads_back(
    prepared, tmp_path, monkeypatch
):
    from petseg.models.unet_noskip import UNetNoSkip

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    track = TrackingParams(experiment="ablation", system_metrics=False, log_model=False)
    models = ModelsParams.model_validate(TINY_MODELS)
    paths = _paths(tmp_path, "unet_noskip", prepared)
    params = TrainParams(**{**TINY_TRAIN, "epochs": 1})
    result = train("unet_noskip", params, models.of("unet_noskip"), track, paths, progress=False)
    model, info = load_model(paths.model)
    assert isinstance(model, UNetNoSkip) and info.arch == "unet_noskip"
    assert info.params == models.unet.model_dump()  # configured by models.unet
    assert result.arch == "unet_noskip" and result.epochs == 1


@pytest.mark.slow  # inductor compiles the network: a minute or so with a cold cache
def test_compiled_training_ends_like_the_eager_one(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    track = TrackingParams(experiment="compile", system_metrics=False, log_model=False)
    arch = ModelsParams.model_validate(TINY_MODELS).unet
    val = load_split(prepared, "val", mmap=False)
    curves, results = {}, {}
    for compile in (False, True):
        paths = _paths(tmp_path / f"compile-{compile}", "unet", prepared)
        params = TrainParams(**{**TINY_TRAIN, "compile": compile})
        results[compile] = train("unet", params, arch, track, paths, progress=False)
        curves[compile] = _read_csv(paths.plot)
        model, _ = load_model(paths.model)  # a plain state dict: no compiled wrapper's names
        cm, _, _ = evaluate(
            model, torch.from_numpy(val.images), torch.from_numpy(val.masks),
            torch.arange(len(val)), Feed(torch.device("cpu"), True), 8, 3, None,
            results[compile].precision == "bf16-autocast",
        )  # fmt: skip
        assert mean_iou(cm) == pytest.approx(results[compile].best_val_miou, rel=1e-5)
    losses = {c: [float(r["train_loss"]) for r in rows] for c, rows in curves.items()}
    # Rounding differences grow over the steps (README: the compiled step's tolerance).
    assert losses[True] == pytest.approx(losses[False], rel=0.03)
    assert losses[True] != losses[False]  # it did run another step
    assert results[True].best_val_miou == pytest.approx(results[False].best_val_miou, abs=0.05)

"""``train(...)``: one architecture, the shared recipe, each epoch in CSV + MLflow, resumable, DDP.

Runs alone (``python stages/train.py --arch unet ...``) or under ``torchrun --nproc-per-node N``
(DDP: gloo on CPU, nccl on CUDA). Each process trains on its own shard of every epoch's shuffled
order; gradients are averaged by DDP, validation confusion matrices and losses are summed across
processes; only rank 0 writes files and talks to MLflow.

Resume: after each epoch rank 0 writes ``<checkpoint_dir>/last.pt`` (model, optimizer, scheduler,
RNG states, history, best weights, MLflow run id) keyed by a fingerprint of the params and the
prepared data. A run killed mid-way continues from there on the next ``dvc repro`` and ends with the
same numbers, in the same MLflow run. A checkpoint with another fingerprint is ignored. The
checkpoint is deleted once the final outputs are written.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import ctypes
import gc
import hashlib
import io
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from petseg import CLASSES, NUM_CLASSES, tracking
from petseg.config import ArchParams, ModelsParams, TrackingParams, TrainParams
from petseg.data.prepared import load_split, read_manifest
from petseg.engine import (
    Feed,
    Stopwatch,
    evaluate,
    make_loss,
    on_device,
    precision,
    train_one_epoch,
)
from petseg.errors import DataError, ParamsError
from petseg.fileio import atomic_file, atomic_write_bytes, atomic_write_json
from petseg.metrics import iou_per_class, mean_iou, pixel_accuracy
from petseg.models import build_model, count_params, gflops_per_image

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_miou",
    "val_pixel_acc",
    *(f"val_iou_{c}" for c in CLASSES),
    "lr",
    "epoch_seconds",
    "images_per_s",
)


@dataclass(frozen=True)
class TrainPaths:
    prepared: Path  # data/prepared
    model: Path  # models/<arch>.pt
    metrics: Path  # metrics/train/<arch>.json
    plot: Path  # plots/train/<arch>.csv
    checkpoint_dir: Path  # checkpoints/<arch> (not a DVC out: it must survive a killed run)


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    # Launched by torchrun (a process group and DDP even for one process: the same code path as
    # N processes, e.g. nccl on a single GPU) or with several processes.
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------------------ set-up
def _pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError(
                "train.device = 'cuda' but no CUDA device is visible: use auto or cpu"
            )
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(
                f"train.device = {choice!r}: process LOCAL_RANK={local_rank} has no GPU of its "
                f"own (this node shows {torch.cuda.device_count()} CUDA device(s)): start at most "
                "that many processes per node (torchrun --nproc-per-node)"
            )
        return torch.device("cuda", local_rank)
    if choice == "mps" and not torch.backends.mps.is_available():
        raise ParamsError("train.device = 'mps' but MPS is not available: use auto or cpu")
    return torch.device(choice)


def setup_runtime(params: TrainParams) -> Runtime:
    """Read torchrun's environment, start the process group, set threads and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    distributed = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun
    device = _pick_device(params.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(params.threads or max(1, (cores or 1) // local_world))
    return Runtime(rank, world, local_rank, device, distributed)


def _fingerprint(arch: str, train: TrainParams, model: ArchParams, prepared: Path) -> str:
    """Identifies what a checkpoint was made from: params of this stage and the prepared data."""
    h = hashlib.sha256()
    h.update(json.dumps([arch, train.model_dump(), model.model_dump()], sort_keys=True).encode())
    h.update((prepared / "manifest.json").read_bytes())
    return h.hexdigest()[:16]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (decaying them only hurts)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=params.lr,
            total_steps=total_steps,
            pct_start=max(params.warmup_fraction, 1e-6),
            anneal_strategy="cos",
        )
    if params.schedule == "constant":  # train.lr throughout: plain Adam(W), no warm-up
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = max(1, round(params.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Streamed to the file: an in-memory copy (two, with BytesIO.getvalue) of model, weight
    # average and optimizer state would sit on top of training's memory peak.
    with atomic_file(path) as fh:
        torch.save(state, fh)


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file must not block training
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("ignoring checkpoint %s: made with other params or data", path)
        return None
    return state


# ------------------------------------------------------------------------------------ outputs
def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def _mlflow_key(column: str) -> str:
    """CSV column → namespaced MLflow metric (``val_miou`` → ``val/miou``)."""
    for prefix in ("train_", "val_"):
        if column.startswith(prefix):
            return f"{prefix[:-1]}/{column[len(prefix) :]}"
    return f"time/{column}" if column in ("epoch_seconds", "images_per_s") else column


def _epoch_order(n: int, steps: int, batch: int, rt: Runtime, gen: torch.Generator) -> torch.Tensor:
    """(steps, batch) rows of this rank for one epoch: a global shuffle, dealt out per rank."""
    perm = torch.randperm(n, generator=gen)[: steps * batch * rt.world]
    return perm.view(steps, rt.world, batch)[:, rt.rank]


def _release_memory() -> None:
    """Hand the training's freed activation memory back to the OS (glibc keeps it otherwise).

    glibc's malloc raises its mmap threshold after large frees, so later tensors come from the
    heap and stay resident when freed; the imports and tracing after training (FLOP counter,
    torch.export for MLflow) would then add to the training's peak instead of reusing it.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or f"{platform.machine()} CPU"


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()} ({platform.machine()}), {cores} cores"


def _sync_buffers(model: nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's BatchNorm running statistics, so all evaluate the same model."""
    if rt.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def _weight_average(model: nn.Module, epochs: float, steps: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers over about ``epochs``
    epochs of ``steps`` optimizer steps (decay 1 - 1 / (epochs x steps) per step), or None for 0.

    Expressed in epochs, not as a per-step decay, so the same value means the same horizon on
    the 117-image real sample (14 steps per epoch at batch 8) and on the full set (391)."""
    if epochs <= 0:
        return None
    decay = 1.0 - 1.0 / max(1.0, epochs * steps)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _weights_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def _all_reduce(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    if rt.distributed:
        dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------------------- train
def train(
    arch: str,
    train_params: TrainParams,
    arch_params: ArchParams,
    tracking_params: TrackingParams,
    paths: TrainPaths,
    data_source: str = "unknown",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``arch`` with the shared recipe; returns the final metrics (also written to files)."""
    rt = setup_runtime(train_params)
    p = train_params
    torch.manual_seed(p.seed)
    manifest = read_manifest(paths.prepared)
    # Rows are read per batch (RowReader): resident memory does not grow with the data set.
    tr = load_split(paths.prepared, "train", stream=True)
    va = load_split(paths.prepared, "val", stream=True)
    # On a GPU the splits move into its memory once (engine.on_device); on a CPU they stay put.
    images, masks, val_images, val_masks = on_device(
        (tr.images, tr.masks, va.images, va.masks), rt.device
    )
    image_size = int(manifest["image_size"])

    steps = len(tr) // (p.batch_size * rt.world)
    if steps < 1:
        raise DataError(
            f"{paths.prepared}: the train split has {len(tr)} images, fewer than one batch "
            f"(train.batch_size {p.batch_size} x {rt.world} processes): lower train.batch_size"
        )
    if image_size % 2**arch_params.depth:
        raise ParamsError(
            f"models.{arch}.depth = {arch_params.depth} needs an image side divisible by "
            f"{2**arch_params.depth}, but preprocess.image_size is {image_size}: change either"
        )
    model = build_model(arch, ModelsParams(**{arch: arch_params}), NUM_CLASSES).to(rt.device)
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = DistributedDataParallel(model) if rt.distributed else model
    # What is validated, kept as the best epoch and saved: the model, or its weight average.
    ema = _weight_average(model, p.ema_epochs, steps)
    judged: nn.Module = ema.module if ema is not None else model
    optimizer = torch.optim.AdamW(_param_groups(model, p.weight_decay), lr=p.lr)
    scheduler = _scheduler(optimizer, p, p.epochs * steps)
    loss_fn = make_loss(p.class_weights, p.label_smoothing, p.dice_weight, rt.device)
    train_feed = Feed(rt.device, p.channels_last, p.augment if p.augment.enabled else None)
    eval_feed = Feed(rt.device, p.channels_last)
    shuffle_gen = torch.Generator().manual_seed(p.seed)
    aug_gen = torch.Generator().manual_seed(p.seed * 7919 + rt.rank + 1)

    fingerprint = _fingerprint(arch, p, arch_params, paths.prepared)
    ckpt_path = paths.checkpoint_dir / "last.pt"
    ckpt = _load_checkpoint(ckpt_path, fingerprint)
    history: list[dict[str, float]] = []
    best = {"miou": -1.0, "epoch": 0, "state": None}
    run_id, start_epoch, train_seconds = None, 1, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        shuffle_gen.set_state(ckpt["rng"]["shuffle"])
        aug_gen.set_state(ckpt["rng"]["augment"][rt.rank])
        history, best = ckpt["history"], ckpt["best"]
        run_id, start_epoch = ckpt["run_id"], ckpt["epoch"] + 1
        train_seconds = ckpt["train_seconds"]
        if rt.main:
            log.info("%s: resuming after epoch %d from %s", arch, ckpt["epoch"], ckpt_path)

    tracker = None
    if rt.main:
        tracker = tracking.Tracker(
            tracking_params.experiment,
            arch,
            tracking.project_root(),
            run_id=run_id,
            tags={"data.source": data_source, "petseg.world_size": str(rt.world)},
            system_metrics=tracking_params.system_metrics,
        )
        tracker.log_params(
            {"arch": arch, "train": p.model_dump(), "models": {arch: arch_params.model_dump()}}
        )
    try:
        for epoch in range(start_epoch, p.epochs + 1):
            watch = Stopwatch(rt.device)
            order = _epoch_order(len(tr), steps, p.batch_size, rt, shuffle_gen)
            batches = (train_feed.batch(images, masks, idx, aug_gen) for idx in order)
            train_loss = train_one_epoch(
                net, batches, steps, optimizer, scheduler, loss_fn, epoch, p.bf16, rt.device,
                progress=progress and rt.main, desc=f"{arch} {epoch}/{p.epochs}",
                after_step=None if ema is None else lambda: ema.update_parameters(model),
            )  # fmt: skip
            train_s = watch.elapsed()
            _sync_buffers(judged, rt)
            cm, val_loss_sum, n_val = evaluate(
                judged, val_images, val_masks, torch.arange(rt.rank, len(va), rt.world),
                eval_feed, p.batch_size, NUM_CLASSES, loss_fn, p.bf16,
            )  # fmt: skip
            sums = _all_reduce(
                torch.tensor(
                    [train_loss, val_loss_sum, n_val], dtype=torch.float64, device=rt.device
                ),
                rt,
            )
            cm = _all_reduce(cm, rt).cpu()
            iou = iou_per_class(cm)
            row: dict[str, float] = {
                "epoch": epoch,
                "train_loss": sums[0].item() / rt.world,
                "val_loss": sums[1].item() / max(sums[2].item(), 1),
                "val_miou": mean_iou(cm),
                "val_pixel_acc": pixel_accuracy(cm),
                **{f"val_iou_{c}": float(iou[i]) for i, c in enumerate(CLASSES)},
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": watch.elapsed(),
                "images_per_s": steps * p.batch_size * rt.world / train_s,
            }
            history.append(row)
            train_seconds += row["epoch_seconds"]
            if row["val_miou"] > best["miou"]:
                state = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
                best = {"miou": row["val_miou"], "epoch": epoch, "state": state}
            aug_states = [torch.empty(0, dtype=torch.uint8) for _ in range(rt.world)]
            if rt.distributed:
                dist.all_gather_object(aug_states, aug_gen.get_state())
            else:
                aug_states[0] = aug_gen.get_state()
            if rt.main:
                _write_csv(paths.plot, history)
                tracker.log_metrics(
                    {_mlflow_key(k): v for k, v in row.items() if k != "epoch"}, epoch
                )
                _save_checkpoint(
                    ckpt_path,
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "ema": None if ema is None else ema.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": {
                            "torch": torch.get_rng_state(),
                            "shuffle": shuffle_gen.get_state(),
                            "augment": aug_states,
                        },
                        "history": history,
                        "best": best,
                        "run_id": tracker.run_id,
                        "train_seconds": train_seconds,
                    },
                )
                log.info(
                    "%s epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f (%.1f s)",
                    arch, epoch, p.epochs, row["train_loss"], row["val_loss"], row["val_miou"],
                    row["epoch_seconds"],
                )  # fmt: skip
            if rt.distributed:
                dist.barrier()
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise

    _release_memory()  # what follows (FLOP count, model export) must not stack on the peak
    result = {
        "arch": arch,
        "best_epoch": best["epoch"],
        "best_val_miou": best["miou"],
        "final_val_miou": history[-1]["val_miou"],
        "epochs": p.epochs,
        "train_seconds": train_seconds,
        "train_images_per_s": sum(r["images_per_s"] for r in history) / len(history),
        "params": count_params(model),
        "gflops_per_image": gflops_per_image(copy.deepcopy(model).cpu(), image_size),
        "image_size": image_size,
        "world_size": rt.world,
        "device": str(rt.device.type),
        "hardware": _hardware(rt.device),
        "threads": torch.get_num_threads(),
        "precision": precision(rt.device, p.bf16),
    }
    if rt.distributed:  # DDP keeps replicas identical; record the evidence
        sums = [0.0] * rt.world
        dist.all_gather_object(sums, _weights_checksum(model))
        result["weights_checksum_per_rank"] = sums
    if rt.main:
        model.load_state_dict(best["state"])
        _write_outputs(arch, arch_params, image_size, best["state"], result, paths)
        tracker.log_metrics({"best/val_miou": result["best_val_miou"]}, step=best["epoch"])
        if tracking_params.log_model:
            # Batch of 2: torch.export would specialise a batch of 1 and refuse other sizes.
            example = torch.zeros(2, 3, image_size, image_size)
            tracker.log_model(
                copy.deepcopy(model).to(memory_format=torch.contiguous_format), example
            )
        tracker.end("FINISHED")
        ckpt_path.unlink(missing_ok=True)
    if rt.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _write_outputs(
    arch: str,
    arch_params: ArchParams,
    image_size: int,
    state: dict[str, torch.Tensor],
    result: dict[str, Any],
    paths: TrainPaths,
) -> None:
    """models/<arch>.pt (weights + config, loadable with weights_only=True) and metrics JSON."""
    with atomic_file(paths.model) as fh:
        torch.save(
            {
                "arch": arch,
                "params": arch_params.model_dump(),
                "num_classes": NUM_CLASSES,
                "classes": list(CLASSES),
                "image_size": image_size,
                "state_dict": state,
            },
            fh,
        )
    atomic_write_json(paths.metrics, result)


def load_trained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`train` from ``models/<arch>.pt``."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run its train stage (dvc repro)") from None
    arch = blob["arch"]
    model = build_model(
        arch, ModelsParams.model_validate({arch: blob["params"]}), blob["num_classes"]
    )
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob

"""``train(...)``: one architecture, the shared recipe, each epoch in MLflow, resumable, DDP.

The recipe in named steps: :func:`load_data`, :func:`build_network` (the model, a backbone
starting from its pretrained weights), :func:`build_state` (weight average, optimizer, schedule,
random generators), :meth:`Checkpoint.restore`, :func:`run_epoch` for each remaining epoch (a
pretrained encoder frozen at first: :func:`follow_freeze`; train, validate, keep the best),
:func:`record_epoch` and
:meth:`Checkpoint.save` after each, and :func:`finish` (model file, metrics, the per-epoch curve,
MLflow model). The three output files are written together at the end and exist only after a
training that succeeded; the checkpoint (not a DVC output) is what survives a kill.

Under ``torchrun`` each process trains on its own shard of every epoch's shuffled order;
gradients are averaged by DDP, validation confusion matrices and losses are summed across
processes (:class:`~petseg.runtime.Runtime`); only rank 0 writes files and talks to MLflow.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petseg import CLASSES, NUM_CLASSES, results, tracking
from petseg.checkpoint import Checkpoint, Restored, TrainState, data_digest, provenance
from petseg.compiled import ForwardLoss, check_compile, forward_loss, keep_freed_memory
from petseg.config import ARCH_SECTIONS, ArchParams, ModelsParams, TrackingParams, TrainParams
from petseg.data.prepared import load_split, read_manifest
from petseg.device import Stopwatch, hardware_name, precision
from petseg.engine import Feed, evaluate, on_device, train_one_epoch
from petseg.errors import DataError, ParamsError
from petseg.fileio import stage_outputs
from petseg.losses import LossFn, make_loss
from petseg.metrics import iou_per_class, mean_iou, pixel_accuracy
from petseg.models import build_model, count_params, gflops_per_image, save_model
from petseg.models.pretrained import LoadedWeights, load_pretrained
from petseg.optim import make_optimizer, make_scheduler, weight_average
from petseg.runtime import Runtime, setup_runtime
from petseg.tracking import served

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPaths:
    prepared: Path  # data/prepared
    model: Path  # models/<arch>.pt
    metrics: Path  # metrics/train/<arch>.json
    plot: Path  # plots/train/<arch>.csv
    checkpoint_dir: Path  # checkpoints/<arch> (not a DVC out: it must survive a killed run)
    weights_dir: Path | None = None  # weights/: where models.<arch>.weights_path must lie


@dataclass(frozen=True)
class Data:
    """The prepared train and val splits, where training reads them from."""

    images: Any  # uint8 (N, S, S, 3) rows: a row reader, or a tensor on the GPU
    masks: Any  # uint8 (N, S, S) labels
    val_images: Any
    val_masks: Any
    n_train: int
    n_val: int
    image_size: int
    prepared: Path  # where they came from
    digest: str  # checkpoint.data_digest: the MLflow dataset's digest


@dataclass(frozen=True)
class Loop:
    """What every epoch uses and none changes."""

    arch: str
    params: TrainParams
    rt: Runtime
    data: Data
    steps: int  # optimizer steps per epoch (per process)
    net: nn.Module  # what the optimizer steps through: the model, or DDP around it
    loss_fn: LossFn
    forward: ForwardLoss  # a batch's loss through net: eager, or compiled (train.compile)
    train_feed: Feed
    eval_feed: Feed
    progress: bool
    encoder: nn.Module | None = None  # a pretrained encoder (fine-tuned: train.freeze_encoder_*)


def train(
    arch: str,
    train_params: TrainParams,
    arch_params: ArchParams,
    tracking_params: TrackingParams,
    paths: TrainPaths,
    data_source: str = "unknown",
    progress: bool = True,
) -> results.TrainMetrics:
    """Train ``arch`` with the shared recipe; returns the final metrics (also written to files)."""
    p = train_params
    rt = setup_runtime(p)
    outputs = (paths.model, paths.metrics, paths.plot)
    # Written together by finish(): after a failure or a kill none is left half-done.
    with stage_outputs(*outputs) if rt.main else contextlib.nullcontext():
        torch.manual_seed(p.seed)
        data = load_data(paths.prepared, rt)
        steps = steps_per_epoch(data, p, rt, paths.prepared)
        check_depth(arch, arch_params, data.image_size)
        check_compile(p.compile, rt.device)
        model, weights = build_network(arch, p, arch_params, rt, paths.weights_dir, progress)
        encoder = model.backbone() if weights is not None else None
        state = build_state(model, p, rt, steps, encoder)
        net = rt.wrap(state.model)
        loss_fn = make_loss(p.class_weights, p.label_smoothing, p.dice_weight, rt.device)
        loop = Loop(
            arch, p, rt, data, steps, net=net, loss_fn=loss_fn,
            forward=forward_loss(net, loss_fn, rt.device, p.bf16, p.compile),
            train_feed=Feed(rt.device, p.channels_last, p.augment if p.augment.enabled else None),
            eval_feed=Feed(rt.device, p.channels_last),
            progress=progress and rt.main, encoder=encoder,
        )  # fmt: skip
        made = provenance(arch, p, arch_params, paths.prepared)
        checkpoint = Checkpoint(paths.checkpoint_dir / "last.pt", made)
        restored = checkpoint.restore(state, rt)
        tracking.claim(state.claim)  # the run of a failure from here on carries it
        if not restored.resumed:  # a kill from here on resumes this training and its run
            checkpoint.save(state, rt)  # (state.claim, on disk before the run exists)
        tracker = start_tracking(
            loop, arch_params, tracking_params, state, data_source, restored, weights
        )
        try:
            for epoch in range(state.epoch + 1, p.epochs + 1):
                loop = follow_freeze(loop, state.model, epoch)
                row = run_epoch(loop, state, epoch)
                tracker.sample_system(row["epoch_seconds"] * (p.epochs - epoch + 1))
                record_epoch(loop, row, tracker)
                checkpoint.save(state, rt)
                rt.barrier()
            result = finish(
                loop, state, arch_params, paths, tracker, tracking_params.log_model, weights
            )
        except BaseException as exc:
            tracker.end(tracking.status_of(exc))  # KILLED for Ctrl-C and SIGTERM
            raise
    if rt.main:
        checkpoint.remove()
    rt.close()
    return result


# ------------------------------------------------------------------------------------ set-up
def load_data(prepared: Path, rt: Runtime) -> Data:
    """The train and val splits; on a GPU they move into its memory once (engine.on_device)."""
    manifest = read_manifest(prepared)
    # Rows are read per batch (RowReader): resident memory does not grow with the data set.
    tr = load_split(prepared, "train", stream=True)
    va = load_split(prepared, "val", stream=True)
    arrays = on_device((tr.images, tr.masks, va.images, va.masks), rt.device)
    return Data(
        *arrays, n_train=len(tr), n_val=len(va), image_size=int(manifest["image_size"]),
        prepared=prepared, digest=data_digest(prepared),
    )  # fmt: skip


def steps_per_epoch(data: Data, p: TrainParams, rt: Runtime, prepared: Path) -> int:
    steps = data.n_train // (p.batch_size * rt.world)
    if steps < 1:
        raise DataError(
            f"{prepared}: the train split has {data.n_train} images, fewer than one batch "
            f"(train.batch_size {p.batch_size} x {rt.world} processes): lower train.batch_size"
        )
    return steps


def check_depth(arch: str, arch_params: ArchParams, image_size: int) -> None:
    if image_size % 2**arch_params.depth:
        raise ParamsError(
            f"models.{arch}.depth = {arch_params.depth} needs an image side divisible by "
            f"{2**arch_params.depth}, but preprocess.image_size is {image_size}: change either"
        )


def build_network(
    arch: str,
    p: TrainParams,
    arch_params: ArchParams,
    rt: Runtime,
    weights_dir: Path | None,
    progress: bool,
) -> tuple[nn.Module, LoadedWeights | None]:
    """A fresh model (seeded by the caller) on the device, its backbone starting from its
    pretrained weights if ``models.<arch>.pretrained`` (and what they were)."""
    section = ARCH_SECTIONS[arch]
    model = build_model(arch, ModelsParams(**{section: arch_params}), NUM_CLASSES)
    weights = load_pretrained(model, section, arch_params, weights_dir, progress and rt.main)
    if weights is not None and rt.main:
        log.info("%s: encoder from %s (%s, sha256 %s)", arch, weights.file, weights.source,
                 weights.sha256)  # fmt: skip
    model = model.to(rt.device)
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, weights


def build_state(
    model: nn.Module, p: TrainParams, rt: Runtime, steps: int, encoder: nn.Module | None = None
) -> TrainState:
    """``model``'s weight average, optimizer (``encoder``: a pretrained one, at its own learning
    rate), schedule and random generators."""
    optimizer = make_optimizer(model, p, encoder)
    return TrainState(
        model=model,
        ema=weight_average(model, p.ema_epochs, steps),
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, p, p.epochs * steps),
        shuffle_gen=torch.Generator().manual_seed(p.seed),
        # Each rank augments with its own stream; all share the shuffle.
        aug_gen=torch.Generator().manual_seed(p.seed * 7919 + rt.rank + 1),
    )


def start_tracking(
    loop: Loop,
    arch_params: ArchParams,
    tracking_params: TrackingParams,
    state: TrainState,
    data_source: str,
    restored: Restored,
    weights: LoadedWeights | None = None,
) -> tracking.Tracker | tracking.Untracked:
    """The MLflow run of this training on rank 0: a new one, or the checkpoint's when resuming;
    the run of an ignored checkpoint, left RUNNING by a killed training, is ended first. Tagged
    with the pretrained weights, if any: their file, SHA-256 and where they came from."""
    if not loop.rt.main:
        return tracking.Untracked()
    if restored.abandoned_run or restored.abandoned_claim:
        why = f"a later training ignored its checkpoint: {restored.reason}"
        tracking.end_abandoned(
            tracking_params, restored.abandoned_run, why, restored.abandoned_claim
        )
    tracker = tracking.start(
        tracking_params,
        loop.arch,
        run_id=state.run_id,
        claim=state.claim,
        tags={
            "data.source": data_source,
            "petseg.world_size": str(loop.rt.world),
            **({} if weights is None else weights_tags(weights)),
        },
    )
    params = {"train": loop.params.model_dump(), "models": {loop.arch: arch_params.model_dump()}}
    data = {"data": {"source": data_source}, "preprocess": {"image_size": loop.data.image_size}}
    tracker.log_params({"arch": loop.arch, **params, **data})
    tracker.log_dataset(
        f"{data_source}-{loop.data.image_size}px", loop.data.digest, loop.data.prepared
    )
    state.run_id = tracker.run_id or state.run_id
    return tracker


def weights_tags(weights: LoadedWeights) -> dict[str, str]:
    return {
        "petseg.encoder_weights.file": weights.file.name,
        "petseg.encoder_weights.sha256": weights.sha256,
        "petseg.encoder_weights.source": weights.source,
    }


# ------------------------------------------------------------------------------------- epoch
def follow_freeze(loop: Loop, model: nn.Module, epoch: int) -> Loop:
    """A pretrained encoder is frozen in the first ``train.freeze_encoder_epochs`` epochs and
    trained from then on; when that changes, DDP is rebuilt around ``model`` (it reduces the
    gradients of the parameters that wanted one when it was built), and the forward with it."""
    frozen = epoch <= loop.params.freeze_encoder_epochs
    if loop.encoder is None or not loop.encoder.freeze(frozen):
        return loop
    if loop.rt.main:
        log.info("%s epoch %d: encoder %s", loop.arch, epoch, "frozen" if frozen else "trained")
    net = loop.rt.wrap(model)
    p = loop.params
    forward = forward_loss(net, loop.loss_fn, loop.rt.device, p.bf16, p.compile)
    return dataclasses.replace(loop, net=net, forward=forward)


def epoch_order(n: int, steps: int, batch: int, rt: Runtime, gen: torch.Generator) -> torch.Tensor:
    """(steps, batch) rows of this rank for one epoch: a global shuffle, dealt out per rank."""
    perm = torch.randperm(n, generator=gen)[: steps * batch * rt.world]
    return perm.view(steps, rt.world, batch)[:, rt.rank]


def run_epoch(loop: Loop, state: TrainState, epoch: int) -> dict[str, float]:
    """Train one epoch, validate the judged model, record the row in ``state``; return it."""
    p, rt, d = loop.params, loop.rt, loop.data
    watch = Stopwatch(rt.device)
    order = epoch_order(d.n_train, loop.steps, p.batch_size, rt, state.shuffle_gen)
    batches = (loop.train_feed.batch(d.images, d.masks, idx, state.aug_gen) for idx in order)
    ema = state.ema
    with keep_freed_memory(rt.device, p.compile):
        train_loss = train_one_epoch(
            loop.net, batches, loop.steps, state.optimizer, state.scheduler, loop.loss_fn, epoch,
            p.bf16, rt.device, progress=loop.progress, desc=f"{loop.arch} {epoch}/{p.epochs}",
            after_step=None if ema is None else lambda: ema.update_parameters(state.model),
            forward=loop.forward,
        )  # fmt: skip
    train_s = watch.elapsed()
    rt.broadcast_buffers(state.judged)
    cm, val_loss_sum, n_val = evaluate(
        state.judged, d.val_images, d.val_masks, torch.arange(rt.rank, d.n_val, rt.world),
        loop.eval_feed, p.batch_size, NUM_CLASSES, loop.loss_fn, p.bf16,
    )  # fmt: skip
    sums = torch.tensor([train_loss, val_loss_sum, n_val], dtype=torch.float64, device=rt.device)
    sums = rt.all_reduce(sums)
    cm = rt.all_reduce(cm).cpu()
    iou = iou_per_class(cm)
    row: dict[str, float] = {
        "epoch": epoch,
        "train_loss": sums[0].item() / rt.world,
        "val_loss": sums[1].item() / max(sums[2].item(), 1),
        "val_miou": mean_iou(cm),
        "val_pixel_acc": pixel_accuracy(cm),
        **{f"val_iou_{c}": float(iou[i]) for i, c in enumerate(CLASSES)},
        "lr": state.optimizer.param_groups[0]["lr"],
        "epoch_seconds": watch.elapsed(),
        "images_per_s": loop.steps * p.batch_size * rt.world / train_s,
    }
    state.end_epoch(row)
    return row


def mlflow_key(column: str) -> str:
    """CSV column → namespaced MLflow metric (``val_miou`` → ``val/miou``)."""
    for prefix in ("train_", "val_"):
        if column.startswith(prefix):
            return f"{prefix[:-1]}/{column[len(prefix) :]}"
    return f"time/{column}" if column in ("epoch_seconds", "images_per_s") else column


def record_epoch(
    loop: Loop, row: dict[str, float], tracker: tracking.Tracker | tracking.Untracked
) -> None:
    """The row to MLflow and, on rank 0, to the log (the curve's file is written at the end)."""
    tracker.log_metrics({mlflow_key(k): v for k, v in row.items() if k != "epoch"}, row["epoch"])
    if not loop.rt.main:
        return
    log.info(
        "%s epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f (%.1f s)",
        loop.arch, row["epoch"], loop.params.epochs, row["train_loss"], row["val_loss"],
        row["val_miou"], row["epoch_seconds"],
    )  # fmt: skip


# -------------------------------------------------------------------------------------- finish
def finish(
    loop: Loop,
    state: TrainState,
    arch_params: ArchParams,
    paths: TrainPaths,
    tracker: tracking.Tracker | tracking.Untracked,
    log_model: bool,
    weights: LoadedWeights | None = None,
) -> results.TrainMetrics:
    """The training's metrics; rank 0 writes the best epoch's model file, the metrics JSON and
    the curve, and ends the MLflow run (with the model, if ``tracking.log_model``)."""
    release_memory()  # what follows (FLOP count, logging the model) must not stack on the peak
    model, rt = state.model, loop.rt
    result = train_metrics(loop, state)
    if weights is not None:
        result = result.model_copy(update={"encoder_weights_sha256": weights.sha256})
    if rt.distributed:  # DDP keeps replicas identical; record the evidence
        checksums = rt.gather(weights_checksum(model))
        result = result.model_copy(update={"weights_checksum_per_rank": checksums})
    if not rt.main:
        return result
    save_model(
        paths.model, loop.arch, arch_params, loop.data.image_size, state.best.state,
        run_id=tracker.run_id,
    )  # fmt: skip
    results.write(paths.metrics, result)
    results.write_csv(paths.plot, results.TRAIN_CURVE_COLUMNS, state.history)
    tracker.log_metrics({"best/val_miou": result.best_val_miou}, step=state.best.epoch)
    if log_model:
        served.log_model(tracker, paths.model)
    tracker.end("FINISHED")
    return result


def train_metrics(loop: Loop, state: TrainState) -> results.TrainMetrics:
    history, model = state.history, state.model
    return results.TrainMetrics(
        arch=loop.arch,
        best_epoch=state.best.epoch,
        best_val_miou=state.best.miou,
        final_val_miou=history[-1]["val_miou"],
        epochs=loop.params.epochs,
        train_seconds=state.train_seconds,
        train_images_per_s=sum(r["images_per_s"] for r in history) / len(history),
        params=count_params(model),
        gflops_per_image=gflops_per_image(copy.deepcopy(model).cpu(), loop.data.image_size),
        image_size=loop.data.image_size,
        world_size=loop.rt.world,
        device=str(loop.rt.device.type),
        hardware=hardware_name(loop.rt.device),
        threads=torch.get_num_threads(),
        precision=precision(loop.rt.device, loop.params.bf16),
    )


def weights_checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def release_memory() -> None:
    """Hand the training's freed activation memory back to the OS (glibc keeps it otherwise).

    glibc's malloc raises its mmap threshold after large frees, so later tensors come from the
    heap and stay resident when freed; the imports and work after training (FLOP counter, the
    MLflow model and its example prediction) would then add to the training's peak instead of
    reusing it.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)

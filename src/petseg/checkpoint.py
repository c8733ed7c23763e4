"""What training carries from epoch to epoch (:class:`TrainState`) and its one checkpoint file.

After each epoch rank 0 writes ``<checkpoint_dir>/last.pt``: the model, its weight average, the
optimizer and scheduler, every random generator (each rank's augmentation stream included), the
per-epoch history, the best epoch's weights, the MLflow run id and the seconds trained so far. It is
keyed by a fingerprint of the stage's params and the prepared data, so a run killed mid-way
continues from there and ends with the same numbers, in the same MLflow run, while a checkpoint
made from other params or data is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from petseg.config import ArchParams, TrainParams
from petseg.fileio import atomic_file
from petseg.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Best:
    """The epoch with the highest validation mIoU so far, and a CPU copy of its weights."""

    miou: float = -1.0
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None


@dataclass
class TrainState:
    """Everything an epoch changes, and so everything a checkpoint holds."""

    model: nn.Module
    ema: AveragedModel | None  # weight average; None when train.ema_epochs is 0
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle_gen: torch.Generator  # the epoch orders (the same on every rank)
    aug_gen: torch.Generator  # this rank's augmentation stream
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best: Best = field(default_factory=Best)
    run_id: str | None = None  # MLflow run, resumed with the checkpoint
    epoch: int = 0  # last finished epoch
    train_seconds: float = 0.0

    @property
    def judged(self) -> nn.Module:
        """What is validated, kept as the best epoch and saved: the weight average if any."""
        return self.ema.module if self.ema is not None else self.model

    def end_epoch(self, row: dict[str, float]) -> None:
        """Record a finished epoch's row and keep its weights if it is the best so far."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        self.train_seconds += row["epoch_seconds"]
        if row["val_miou"] > self.best.miou:
            weights = {k: v.detach().cpu().clone() for k, v in self.judged.state_dict().items()}
            self.best = Best(row["val_miou"], self.epoch, weights)


def fingerprint(arch: str, train: TrainParams, model: ArchParams, prepared: Path) -> str:
    """Identifies what a checkpoint was made from: params of this stage and the prepared data."""
    h = hashlib.sha256()
    h.update(json.dumps([arch, train.model_dump(), model.model_dump()], sort_keys=True).encode())
    h.update((prepared / "manifest.json").read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """``path`` holds the :class:`TrainState` of a run identified by ``fingerprint``."""

    path: Path
    fingerprint: str

    def save(self, state: TrainState, rt: Runtime) -> None:
        """Called by every rank (their augmentation streams are gathered); rank 0 writes."""
        aug_states = rt.gather(state.aug_gen.get_state())
        if not rt.main:
            return
        blob = {
            "fingerprint": self.fingerprint,
            "epoch": state.epoch,
            "model": state.model.state_dict(),
            "ema": None if state.ema is None else state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": state.shuffle_gen.get_state(),
                "augment": aug_states,
            },
            "history": state.history,
            "best": vars(state.best),
            "run_id": state.run_id,
            "train_seconds": state.train_seconds,
        }
        # Streamed to the file: an in-memory copy of model, weight average and optimizer state
        # would sit on top of training's memory peak.
        with atomic_file(self.path) as fh:
            torch.save(blob, fh)

    def restore(self, state: TrainState, rt: Runtime) -> bool:
        """Load the checkpoint into ``state`` if there is one of this run; True if so."""
        blob = self._load()
        if blob is None:
            return False
        state.model.load_state_dict(blob["model"])
        if state.ema is not None:
            state.ema.load_state_dict(blob["ema"])
        state.optimizer.load_state_dict(blob["optimizer"])
        state.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"]["torch"])
        state.shuffle_gen.set_state(blob["rng"]["shuffle"])
        state.aug_gen.set_state(blob["rng"]["augment"][rt.rank])
        state.history, state.best = blob["history"], Best(**blob["best"])
        state.run_id, state.epoch = blob["run_id"], blob["epoch"]
        state.train_seconds = blob["train_seconds"]
        if rt.main:
            log.info("resuming after epoch %d from %s", state.epoch, self.path)
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file must not block training
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None
        if blob.get("fingerprint") != self.fingerprint:
            log.info("ignoring checkpoint %s: made with other params or data", self.path)
            return None
        return blob

"""What training carries from epoch to epoch (:class:`TrainState`) and its one checkpoint file.

After each epoch rank 0 writes ``<checkpoint_dir>/last.pt``: the model, its weight average, the
optimizer and scheduler, every random generator (each rank's augmentation stream included), the
per-epoch history, the best epoch's weights, the MLflow run id and the seconds trained so far. It
records what it was made from (:func:`provenance`: the stage's params, the prepared data, the
source of every module the training runs and the torch version), so a run killed mid-way continues
from there and ends with the same numbers, in the same MLflow run, while a checkpoint made from
anything else is ignored with a warning that says what differs: resuming it would mix the weights
of two versions.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

import petseg
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
    claim: str = field(default_factory=lambda: uuid.uuid4().hex)  # finds the run if run_id can't
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


# ------------------------------------------------------------------------------- provenance
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _module_file(root: Path, name: str) -> Path | None:
    """The file of petseg module ``name`` (a package: its ``__init__.py``), if there is one."""
    base = root.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The petseg modules ``tree`` (module ``name``) imports, lazily or not; ``if
    TYPE_CHECKING:`` bodies never run and do not count."""
    skip = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] if node.level else [])
            module = ".".join(p for p in (base, node.module or "") if p)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "petseg" or m.startswith("petseg.")}


def code_files(arch: str) -> list[Path]:
    """The source files a training of ``arch`` runs: :mod:`petseg.train` and the stage plumbing
    of :mod:`petseg.cli`, every petseg module they import at any depth (lazy imports included),
    the packages around them, and the module of ``arch``, which the registry imports by name:
    what dvc.yaml lists as the stage's code, but for the stage script itself."""
    root = Path(petseg.__file__).parent
    todo, files = ["petseg.cli", "petseg.train", f"petseg.models.{arch}"], {}
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if path is None or name in files:
            continue  # ``from petseg.x import name`` where name is not a module
        files[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        tree = ast.parse(path.read_bytes(), filename=str(path))
        todo += sorted(_imported(tree, name, path.name == "__init__.py"))
    return sorted(files.values())


def provenance(arch: str, train: TrainParams, model: ArchParams, prepared: Path) -> dict[str, Any]:
    """What a checkpoint is made from: the stage's params, the prepared data, the code it runs
    (a digest per file, named relative to the package's parent) and the torch version."""
    top = Path(petseg.__file__).parent.parent
    params = json.dumps([arch, train.model_dump(), model.model_dump()], sort_keys=True)
    return {
        "params": _digest(params.encode()),
        "data": data_digest(prepared),
        "code": {p.relative_to(top).as_posix(): _digest(p.read_bytes()) for p in code_files(arch)},
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses
    }


def data_digest(prepared: Path) -> str:
    """The prepared data's identity: a digest of its manifest (counts, sizes, every file)."""
    return _digest((prepared / "manifest.json").read_bytes())


def fingerprint(arch: str, train: TrainParams, model: ArchParams, prepared: Path) -> str:
    """One digest of :func:`provenance`: equal exactly when a checkpoint may be resumed."""
    made = provenance(arch, train, model, prepared)
    return _digest(json.dumps(made, sort_keys=True).encode())


def differences(made: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """Why a checkpoint made from ``made`` must not be resumed now (None: it may be)."""
    if made is None:
        return "it records no provenance (an older petseg made it)"
    why = [f"other {key}" for key in ("params", "data") if made.get(key) != now[key]]
    old, new = made.get("code", {}), now["code"]
    changed = sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f))
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        why.append(f"other code ({', '.join(changed[:3])}{more} changed)")
    if made.get("torch") != now["torch"]:
        why.append(f"torch {made.get('torch')} (now {now['torch']})")
    return ", ".join(why) or None


@dataclass(frozen=True)
class Restored:
    """What :meth:`Checkpoint.restore` found."""

    resumed: bool = False
    abandoned_run: str | None = None  # the MLflow run of a checkpoint that was ignored
    abandoned_claim: str | None = None  # and its claim (finds the run if it named none)
    reason: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """``path`` holds the :class:`TrainState` of a run made from ``made`` (:func:`provenance`)."""

    path: Path
    made: dict[str, Any]

    def save(self, state: TrainState, rt: Runtime) -> None:
        """Called by every rank (their augmentation streams are gathered); rank 0 writes."""
        aug_states = rt.gather(state.aug_gen.get_state())
        if not rt.main:
            return
        blob = {
            "provenance": self.made,
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
            "claim": state.claim,
            "train_seconds": state.train_seconds,
        }
        # Streamed to the file: an in-memory copy of model, weight average and optimizer state
        # would sit on top of training's memory peak.
        with atomic_file(self.path) as fh:
            torch.save(blob, fh)

    def restore(self, state: TrainState, rt: Runtime) -> Restored:
        """Load the checkpoint into ``state`` if there is one of this run."""
        blob = self._load(rt)
        if not isinstance(blob, dict):
            return blob
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
        state.claim = blob.get("claim", state.claim)
        state.train_seconds = blob["train_seconds"]
        if rt.main:
            log.info("resuming after epoch %d from %s", state.epoch, self.path)
        return Restored(resumed=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _load(self, rt: Runtime) -> dict[str, Any] | Restored:
        if not self.path.exists():
            return Restored()
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file must not block training
            return self._ignore(rt, f"it is unreadable ({str(exc).splitlines()[0][:200]})")
        why = differences(blob.get("provenance"), self.made)
        if why is not None:
            return self._ignore(rt, f"made from {why}", blob.get("run_id"), blob.get("claim"))
        return blob

    def _ignore(
        self, rt: Runtime, reason: str, run_id: str | None = None, claim: str | None = None
    ) -> Restored:
        if rt.main:
            log.warning("ignoring checkpoint %s: %s; training from the start", self.path, reason)
        return Restored(abandoned_run=run_id, abandoned_claim=claim, reason=reason)

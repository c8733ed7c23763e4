"""The process's place in a (possibly distributed) training run, and every DDP call behind it.

Runs alone or under ``torchrun --nproc-per-node N`` (DDP: gloo on CPU, nccl on CUDA). Every
collective used by training is a method here, and each is a no-op (or the trivial answer) for a
single process, so the training code reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from petseg.config import TrainParams
from petseg.device import pick_device, usable_cores


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
        """Rank 0: the only process that writes files and talks to MLflow."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: DDP (gradients averaged across processes) or ``model`` itself."""
        return DistributedDataParallel(model) if self.distributed else model

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over processes, in place."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics): all evaluate one model."""
        if self.distributed:
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


def setup_runtime(params: TrainParams) -> Runtime:
    """Read torchrun's environment, start the process group, set threads and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    distributed = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # set by torchrun
    device = pick_device(params.device, "train.device", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(params.threads or max(1, usable_cores() // local_world))
    return Runtime(rank, world, local_rank, device, distributed)

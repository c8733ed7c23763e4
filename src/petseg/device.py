"""Where and in what precision tensors are computed: device choice, bf16 autocast, timing.

Shared by training, evaluation and anything that predicts; it imports nothing of petseg but the
errors, so a module that only predicts can use it without pulling in the training stack.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import torch

from petseg.errors import ParamsError


def pick_device(choice: str, key: str = "train.device", local_rank: int = 0) -> torch.device:
    """The device named by the params value ``choice`` (``key`` names it in errors).

    ``auto`` takes CUDA, then MPS, then the CPU; ``local_rank`` selects this process's GPU."""
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError(f"{key} = 'cuda' but no CUDA device is visible: use auto or cpu")
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(
                f"{key} = {choice!r}: process LOCAL_RANK={local_rank} has no GPU of its "
                f"own (this node shows {torch.cuda.device_count()} CUDA device(s)): start at most "
                "that many processes per node (torchrun --nproc-per-node)"
            )
        return torch.device("cuda", local_rank)
    if choice == "mps" and not torch.backends.mps.is_available():
        raise ParamsError(f"{key} = 'mps' but MPS is not available: use auto or cpu")
    return torch.device(choice)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16
    or AMX (oneDNN's bf16 convolutions); elsewhere bf16 would be emulated, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(
            getattr(cpu, probe, lambda: False)()
            for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    return False


def precision(device: torch.device, bf16: bool) -> str:
    """What :func:`autocast` does for these settings: "bf16-autocast" or "float32"."""
    return "bf16-autocast" if bf16 and native_bf16(device) else "float32"


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has native bf16 (see :func:`native_bf16`), else a no-op.

    Convolutions and matrix products then run in bf16 and save bf16 activations (half the
    memory); losses are computed in float32 (callers cast the logits) and the weights, their
    gradients and the optimizer state stay float32.
    """
    if precision(device, bf16) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or f"{platform.machine()} CPU"


def hardware_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its architecture and usable cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({platform.machine()}), {usable_cores()} cores"


class Stopwatch:
    """Wall-clock seconds that include pending device work (CUDA is asynchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return self._now() - self.start

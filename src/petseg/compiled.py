"""``train.compile``: the training step's forward pass and loss as one ``torch.compile`` graph.

Off: :func:`eager_forward`, the step exactly as it always ran. On (:func:`compiled_forward`):

- forward and loss are one graph compiled by inductor (C++/OpenMP kernels on a CPU, Triton on a
  GPU) and AOTAutograd compiles its backward with it: BatchNorm, ReLU, the autocast casts, the
  concatenations and the loss fuse into a few passes over the activations instead of one pass per
  op; the convolutions stay the library's (oneDNN, cuDNN). The per-op breakdown of
  ``benchmarks/train_throughput.py`` shows where a step's time goes either way.
- AdamW runs its fused kernel (``optim.make_optimizer``): one pass over weights, gradients and
  moments instead of one per arithmetic op.
- On a CPU, freed memory stays in the process's heap while training (:func:`keep_freed_memory`).
- On CUDA the mode is ``reduce-overhead``: CUDA graphs replay the step's kernels with one launch,
  the limit of a small-batch step on a fast GPU.

Compiling costs time once per network and process (the inductor cache, ``TORCHINDUCTOR_CACHE_DIR``,
makes later compiles of the same graph cheaper), so it pays back over long trainings only.
Results agree with the eager step up to floating-point rounding (fusion reorders sums, bf16
intermediates are rounded at other places), not bitwise: the tolerance is in the README and
tests/test_compiled.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from petseg.device import autocast, precision
from petseg.errors import ParamsError
from petseg.losses import LossFn

log = logging.getLogger(__name__)

ForwardLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, masks) -> loss


def eager_forward(net: nn.Module, loss_fn: LossFn, device: torch.device, bf16: bool) -> ForwardLoss:
    """Forward pass and loss as ``train.compile: false`` runs them."""

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device, bf16):
            logits = net(x)
        return loss_fn(logits, y)

    return forward_loss


def compile_mode(device: torch.device) -> str | None:
    """inductor's mode: CUDA graphs on a GPU, where a small-batch step is bound by kernel
    launches; the default elsewhere (CUDA graphs do not exist there)."""
    return "reduce-overhead" if device.type == "cuda" else None


def compiled_forward(
    net: nn.Module, loss_fn: LossFn, device: torch.device, bf16: bool
) -> ForwardLoss:
    """Forward pass and loss as one compiled graph (compiled at the first call)."""
    amp = precision(device, bf16) != "float32"  # decided here: dynamo cannot trace the CPU probe

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        return loss_fn(logits, y)

    mode = compile_mode(device)
    log.info("train.compile: the first step compiles the network (mode %s)", mode or "default")
    compiled = torch.compile(forward_loss, mode=mode, dynamic=False)
    if device.type != "cuda":
        return compiled

    def step_begin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # A new step: the CUDA graphs may reuse the memory of the previous step's outputs.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x, y)

    return step_begin


def forward_loss(
    net: nn.Module, loss_fn: LossFn, device: torch.device, bf16: bool, compile: bool
) -> ForwardLoss:
    """The training step's forward pass and loss for ``train.compile``."""
    make = compiled_forward if compile else eager_forward
    return make(net, loss_fn, device, bf16)


def check_compile(compile: bool, device: torch.device) -> None:
    """Fail before training when ``train.compile: true`` cannot work on ``device``."""
    if not compile:
        return
    fix = "or set train.compile: false"
    if device.type == "mps":
        raise ParamsError(f"train.compile = true is not supported on MPS: {fix}")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ParamsError(
                f"train.compile = true needs Triton on CUDA (pip install triton), {fix}"
            )
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except (RuntimeError, OSError) as exc:
        raise ParamsError(
            f"train.compile = true needs a C++ compiler for inductor's CPU kernels ({exc}): "
            f"install one (apt-get install g++, or set CXX), {fix}"
        ) from None


# glibc's mallopt parameters (malloc.h); the largest mmap threshold its own adjustment sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD_MAX, _DEFAULT_MMAP_MAX = 32 * 1024 * 1024, 65536


@contextlib.contextmanager
def keep_freed_memory(device: torch.device, enabled: bool = True) -> Iterator[bool]:
    """While inside, glibc's malloc serves every allocation from its heap and keeps what is freed
    there; yields whether it applies (``enabled``, a CPU and glibc).

    By default glibc maps allocations above its mmap threshold (at most 32 MiB) afresh and unmaps
    them when freed, so each step's largest activations are page-faulted and zeroed by the kernel
    again on every step. On leaving, the thresholds are those glibc's own adjustment reaches
    after a large free (mmap above 32 MiB, trim above twice that); ``malloc_trim`` (train's
    ``release_memory``) hands the kept memory back to the OS.
    """
    libc = None
    if enabled and device.type == "cpu":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl)
            glibc = ctypes.CDLL("libc.so.6")
            glibc.mallopt(_M_MMAP_MAX, 0)
            glibc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
            libc = glibc
    try:
        yield libc is not None
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)

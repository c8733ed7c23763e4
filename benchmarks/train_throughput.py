"""Benchmark: training throughput (CPU, or ``--device cuda``), as ratios measured in one run.

Every ratio compares two things timed in the same process, interleaved step by step (round
robin), so that other jobs on the machine slow both sides alike; absolute images/s are context
only. Targets are printed as PASS/MISS, never asserted. Sections, in the order they run:

(d) peak memory: peak RSS of a fresh ``python`` child that runs the project's real ``train()``
    at ``--size`` with the real recipe's ``train`` and ``models`` values (the code defaults:
    params.yaml with presets/real.yaml applied), once per ``--mem-batches`` (default: its
    ``train.batch_size``, 8, which is what ``make real`` trains with and carries the verdict,
    and ``--batch`` for context), for every
    ``--mem-archs``, on a prepared set as large as the real one (7,390 images: tiled synthetic
    content in the real prepared format, with a manifest; MLflow to a sqlite store in the work
    folder; log_model and system metrics off). The run is limited by monkeypatching inside the
    child only: ``petseg.train.epoch_order`` keeps its first ``--mem-steps`` rows and
    ``petseg.train.evaluate`` sees the first ``--mem-val-batches`` validation batches;
    everything else (train/val rows read per batch, model, AdamW state, scheduler, checkpoint,
    MLflow run) is the real code path. Peak = VmHWM of the child; ru_maxrss is printed too, but
    Linux carries ru_maxrss over fork+exec, so a child of a big parent would report the parent's
    peak: that is why (d) runs first, while this process is small. Target <= 2 GiB. The peak is
    what torch and MLflow hold once imported, plus the model's saved activations (they grow with
    the batch), AdamW state, the weight average and glibc's heap; RESULTS.md has the figures.
(a) feed overhead: images/s of the REAL training loop -- ``Feed.batch`` from uint8 tensors,
    ``augment_batch`` with the default AugmentParams, then ``engine.train_one_epoch`` with the
    project's loss, optimizer (``optim.make_optimizer``), scheduler and weight average
    (``train.ema_epochs``, updated after every step as train() does) -- divided by images/s of
    the BARE step (forward, loss, backward, optimizer step) on one resident pre-normalised
    channels_last batch, same network and optimizer, a model of its own: the median over rounds
    of bare time / real time of back-to-back steps (best/best is printed too). Target >= 0.95.
    With a few steps such two-sided ratios carry a few % of machine noise; "non-feed share"
    (1 - feed time / step time, within each real step) is the steadier reading of the same
    question. "feed ms" = time making the batch.
(b) compute efficiency: FLOPs of one training step (forward + backward, counted once by
    ``torch.utils.flop_counter.FlopCounterMode``) / best bare step time, divided by the ceiling
    of the precision the step computes in, measured in the same process with the same threads
    after every round (``Ceiling``: the best of a square ``torch.mm``, the same product as a 1x1
    convolution and a 3x3 convolution of the U-Net's shape; bf16 for the project's contenders
    when training runs in bf16 autocast, ``train.bf16`` where the CPU has native bf16, see
    ``petseg.device.native_bf16``; float32 otherwise). Target >= 0.70 for unet at 128 px, batch
    32. The ceiling at N threads is the best rate seen with at most N threads (more threads can
    do what fewer did; on a busy machine a 2-thread product is disturbed more often than a
    1-thread one). Then the per-op breakdown of the project's bare contenders: the least
    disturbed of ``--profile-steps`` profiled steps (``torch.profiler``, ``--top-ops`` rows by
    self time, each op's phase: forward (with the loss), backward or optimizer; compiled kernels
    by their generated names, ``graph_0_cpp_fused_<ops>_<n>``) and the convolutions' share of
    it: the FLOPs over the convolutions' own time is the ratio the step could reach if
    everything else took no time. "med s" = median step time, for context.
    "kflt" = minor page faults of the process per step, in thousands (memory the allocator took
    fresh from the OS and the kernel zeroed; its cost lands in the self time of the ops that
    first write the memory). For the archs in ``--explore`` the bare step is also timed in the
    ``--variants``: ``{eager|compiled[:mode]}-{cl|nchw}[-fused][-bf16][-t<N>]`` = eager or
    ``torch.compile`` (inductor) of the model alone, channels_last or NCHW,
    ``AdamW(fused=True)``, bf16 autocast (else float32), N threads (its ratio then uses the
    ceiling at N threads). "first s" = the first step, i.e. compile + one step for compiled
    variants; the inductor cache starts empty in each run (unless ``--warm-compile-cache``), but
    later compiles in a run reuse the earlier ones' kernels, so only the first compiled variant
    shows a cold compile. The real loop driving the first compiled channels_last variant is
    timed too ((a) for a compiled model).
(c) batch feed: images/s of ``Feed.batch`` with augmentation from the uint8 arrays in memory,
    divided by the best naive per-sample ``DataLoader`` (``Dataset.__getitem__``: PIL open +
    convert RGB + resize, image BILINEAR, trimap NEAREST, to uint8 tensors; default collate;
    num_workers from ``--naive-workers``, default 0 and 2, persistent workers, so worker start-up is
    not counted) over the real photos of ``--naive-data`` when present, else a raw set written by
    ``petseg.data.synthetic.generate``. The naive side does no augmentation and no
    float conversion, so the ratio is a lower bound. Target >= 50x.

On CUDA (``--device cuda``): models, resident batch and feed run on the GPU, with the arrays in
GPU memory as ``train()`` holds them there (``petseg.engine.on_device``); every timed step is
bracketed by ``torch.cuda.synchronize``; the ceilings of (b) use 8192^3 products (cuBLAS,
cuDNN) and the breakdown the GPU time of each op's kernels; "feed ms" is the host time to queue
the feed's kernels. (d) trains with
``train.device: auto`` (so on the GPU) and also prints the GPU's peak allocated memory. Give
the naive loader of (c) as many workers as the machine has cores (``--naive-workers 0,16``).

Reading it: "best s" is the fastest timed step of a contender (the least disturbed by other
jobs); "cores" = process CPU seconds / wall seconds of that step (about 2.0 with two threads on
an idle 2-core machine; far less = other jobs had the cores). On a shared machine libgomp's
default spin-waiting makes multi-threaded steps very sensitive to other jobs; compare a run under
``OMP_WAIT_POLICY=PASSIVE`` (printed in the header) before trusting numbers from a busy box.

Usage: python benchmarks/train_throughput.py [--size 128] [--batch 32] [--steps 3]
       [--archs strided,unpool,unet] [--explore unet] [--variants ...] [--threads 0]
       [--device cpu|cuda] [--naive-workers 0,2] [--parts abcd] [--json ratios.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._inductor.config
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader, Dataset

from petseg import CLASSES, NUM_CLASSES
from petseg.compiled import (
    ForwardLoss,
    check_compile,
    eager_forward,
    forward_loss,
    keep_freed_memory,
)
from petseg.config import (
    AugmentParams,
    ModelsParams,
    SyntheticParams,
    TrackingParams,
    TrainParams,
)
from petseg.data.oxford import image_path, read_list, trimap_path, trimap_to_labels
from petseg.data.prepared import MANIFEST, SPLITS
from petseg.data.synthetic import generate
from petseg.device import cpu_name, precision
from petseg.engine import Feed, on_device, train_one_epoch
from petseg.losses import make_loss
from petseg.models import build_model, gflops_per_image
from petseg.optim import make_optimizer, make_scheduler, param_groups, weight_average
from petseg.runtime import Runtime
from petseg.train import epoch_order

CPU = torch.device("cpu")
DEV = CPU  # --device: where the models train (the feed's source arrays stay in host memory)
GIB = 1024**3
# The real set: 3,680 trainval (85 % train / 15 % val) + the rest as test = 7,390 images.
REAL_SPLIT_SIZES = {"train": 3128, "val": 552, "test": 3710}
TARGETS = {"a": 0.95, "b": 0.70, "c": 50.0, "d_gib": 2.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def load_str() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def sync() -> None:
    """Wait for the device: CUDA work is asynchronous, so a host clock needs this around it."""
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


# ------------------------------------------------------------------------------ data on disk
def make_raw(root: Path, n_images: int, sides: tuple[int, int]) -> Path:
    """A synthetic raw set in the official layout, ``n_images`` pairs, sides in ``sides``."""
    raw = root / "raw"
    n_test = max(1, n_images // 5)
    params = SyntheticParams(
        n_trainval=n_images - n_test, n_test=n_test, min_size=sides[0], max_size=sides[1]
    )
    generate(raw, params, progress=False)
    return raw


def raw_names(raw: Path) -> list[str]:
    return [
        e.name for f in ("trainval.txt", "test.txt") for e in read_list(raw / "annotations" / f)
    ]


def naive_pair(raw: Path, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """What a first per-sample loader does: PIL open, convert RGB, resize; trimap NEAREST."""
    rgb = Image.open(image_path(raw, name)).convert("RGB")
    image = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))
    trimap = Image.open(trimap_path(raw, name)).resize((size, size), Image.Resampling.NEAREST)
    return image, np.asarray(trimap)


class NaivePets(Dataset):
    """Per-sample dataset decoding JPEG/PNG from disk on every access."""

    def __init__(self, raw: Path, names: list[str], size: int) -> None:
        self.raw, self.names, self.size = raw, names, size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, trimap = naive_pair(self.raw, self.names[i], self.size)
        return torch.from_numpy(image.copy()), torch.from_numpy(trimap.astype(np.int64) - 1)


def decode_all(raw: Path, names: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S, 3) images and (N, S, S) labels, i.e. the prepared format, in memory."""
    images = np.empty((len(names), size, size, 3), np.uint8)
    masks = np.empty((len(names), size, size), np.uint8)
    for i, name in enumerate(names):
        image, trimap = naive_pair(raw, name, size)
        images[i], masks[i] = image, trimap_to_labels(trimap)
    return images, masks


def _write_npy(path: Path, src: np.ndarray, n: int) -> None:
    """Write an .npy of ``n`` rows tiling ``src``, by plain writes (no mapping: the writer's RSS
    stays small)."""
    header = {"descr": src.dtype.str, "fortran_order": False, "shape": (n, *src.shape[1:])}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, n, len(src)):
            f.write(np.ascontiguousarray(src[: min(len(src), n - start)]).tobytes())


def write_large_prepared(
    root: Path, images: np.ndarray, masks: np.ndarray, sizes: dict[str, int]
) -> Path:
    """A prepared folder (``.npy`` per split + manifest) of ``sizes`` images, tiling the inputs."""
    root.mkdir(parents=True, exist_ok=True)
    size = images.shape[1]
    splits: dict[str, Any] = {}
    for split in SPLITS:
        n = sizes[split]
        _write_npy(root / f"{split}_images.npy", images, n)
        _write_npy(root / f"{split}_masks.npy", masks, n)
        splits[split] = {
            "count": n,
            "listed": n,
            "names": [f"tiled_{split}_{i}" for i in range(n)],
            "original_sizes": [[size, size]] * n,
            "breeds": {"tiled": n},
        }
    manifest = {
        "image_size": size,
        "classes": list(CLASSES),
        "counts": {s: sizes[s] for s in SPLITS},
        "splits": splits,
        "skipped": [],
        "notes": [],
        "params": {"benchmark": "tiled synthetic content"},
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


# ------------------------------------------------------------------------------ ceilings
class Ceiling:
    """Best rate seen in this process, per (threads, precision), of the three products a training
    step's FLOPs are made of: a square ``torch.mm``, the same product as a 1x1 convolution, and a
    3x3 convolution of the U-Net's shape (channels_last, batch 32, 128 -> 128 channels at 32x32:
    its third level at 128 px), all in the library the model's convolutions use (oneDNN on a CPU,
    cuDNN on CUDA). The ceiling of a precision is the best of the three: what this hardware was
    seen to reach, in the precision the step computes in (bf16 under autocast, else float32)."""

    KINDS = ("mm", "1x1", "3x3")

    def __init__(self, n: int = 4096) -> None:
        self.n = 8192 if DEV.type == "cuda" else n  # a product large enough to fill a GPU
        self.best: dict[tuple[int, torch.dtype], dict[str, float]] = {}
        self._ops: dict[torch.dtype, list[tuple[str, float, Callable[[], Any]]]] = {}
        # Memory bandwidth, for reading the breakdown (BatchNorm, ReLU and their fusions are
        # bound by it): GB/s of copying 256 MiB, bytes read + written, per thread count.
        self._src = torch.empty(2**27, dtype=torch.bfloat16, device=DEV).fill_(1.0)
        self._dst = torch.empty_like(self._src)
        self.copy_gbps: dict[int, float] = {}

    def _make(self, dtype: torch.dtype) -> list[tuple[str, float, Callable[[], Any]]]:
        n, cl = self.n, torch.channels_last
        kw = {"device": DEV, "dtype": dtype}
        a, b, c = torch.randn(n, n, **kw), torch.randn(n, n, **kw), torch.empty(n, n, **kw)
        # (1, n, 64, 64) x (n, n, 1, 1): an n x 4096 x n product (the matmul's own on a CPU)
        x1 = torch.randn(1, n, 64, 64, **kw).contiguous(memory_format=cl)
        w1 = torch.randn(n, n, 1, 1, **kw).contiguous(memory_format=cl)
        x3 = torch.randn(32, 128, 32, 32, **kw).contiguous(memory_format=cl)
        w3 = torch.randn(128, 128, 3, 3, **kw).contiguous(memory_format=cl)
        return [
            ("mm", 2.0 * n**3, lambda: torch.mm(a, b, out=c)),
            ("1x1", 2.0 * n * n * 64 * 64, lambda: F.conv2d(x1, w1)),
            ("3x3", 2.0 * 32 * 128 * 128 * 9 * 32 * 32, lambda: F.conv2d(x3, w3, padding=1)),
        ]

    def measure(self, threads: int, dtype: torch.dtype, reps: int = 1) -> None:
        torch.set_num_threads(threads)
        first = dtype not in self._ops or (threads, dtype) not in self.best
        ops = self._ops.setdefault(dtype, self._make(dtype))
        best = self.best.setdefault((threads, dtype), dict.fromkeys(self.KINDS, 0.0))
        inner = 10 if DEV.type == "cuda" else 1  # one GPU product takes ~1 ms
        with torch.no_grad():
            for kind, flops, op in ops:
                if first:  # warm-up: the libraries set up their kernels on the first call
                    op()
                for _ in range(reps + first):
                    sync()
                    t = time.perf_counter()
                    for _ in range(inner):
                        op()
                    sync()
                    best[kind] = max(best[kind], inner * flops / (time.perf_counter() - t) / 1e9)
            for _ in range(reps + first):
                sync()
                t = time.perf_counter()
                self._dst.copy_(self._src)
                sync()
                gbps = 2 * self._src.nbytes / (time.perf_counter() - t) / 1e9
                self.copy_gbps[threads] = max(self.copy_gbps.get(threads, 0.0), gbps)

    def of(self, threads: int, dtype: torch.dtype) -> float:
        """The ceiling in GFLOP/s: the best of the three products with at most ``threads``
        threads (more threads can always do what fewer did)."""
        seen = [max(b.values()) for (n, d), b in self.best.items() if d == dtype and n <= threads]
        return max(seen)

    def print(self) -> None:
        print("\nCeilings, best seen in this run (GFLOP/s; the ceiling is the best of the three):")
        for (threads, dtype), best in sorted(self.best.items(), key=str):
            rates = ", ".join(f"{k} {v:7.1f}" for k, v in best.items())
            dt, ceil = str(dtype).removeprefix("torch."), self.of(threads, dtype)
            print(f"    {threads} thread(s), {dt:8s}: {rates} -> ceiling {ceil:.1f}")
        for threads, gbps in sorted(self.copy_gbps.items()):
            print(f"    {threads} thread(s), memory: copying 256 MiB {gbps:.1f} GB/s (read+write)")


# --------------------------------------------------------------------------- step contenders
@dataclass
class Contender:
    label: str
    step: Callable[[], float]  # runs one step; returns seconds spent feeding (0 for bare)
    threads: int
    dtype: torch.dtype  # what its products compute in: its ceiling's precision
    real: bool = False
    compiled: bool = False
    twin: Contender | None = None  # for a real loop: the bare step on the same model
    profile: bool = False  # print its per-op breakdown
    first_s: float = math.nan
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    feed: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # minor page faults of the process

    def run(self) -> tuple[float, float, float, int]:
        torch.set_num_threads(self.threads)
        sync()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        fed = self.step()
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, fed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def best_cores(self) -> float:
        i = self.wall.index(self.best)
        return self.cpu[i] / self.wall[i]


@dataclass(frozen=True)
class Setup:
    """What every contender of one architecture shares."""

    arch: str
    params: TrainParams
    init_state: dict[str, torch.Tensor]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    feed: Feed
    order: Iterator[torch.Tensor]
    aug_gen: torch.Generator
    x: torch.Tensor  # the resident batch: pre-normalised, channels_last, no augmentation
    y: torch.Tensor


@dataclass(frozen=True)
class Net:
    """A model and what steps it: forward pass with loss, optimizer, memory policy."""

    model: nn.Module
    forward: ForwardLoss  # (x, y) -> loss: eager, or compiled (petseg.compiled)
    optimizer: torch.optim.Optimizer
    keep_memory: bool = False  # train.compile's keep_freed_memory around the step


def bare_step(net: Net, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    def step() -> float:
        with keep_freed_memory(DEV, net.keep_memory):
            with record_function("step.forward"):
                loss = net.forward(x, y)
            net.optimizer.zero_grad(set_to_none=True)
            with record_function("step.backward"):
                loss.backward()
            with record_function("step.optimizer"):
                net.optimizer.step()
        return 0.0

    return step


def real_step(
    net: Net,
    s: Setup,
    images: torch.Tensor,
    masks: torch.Tensor,
    bf16: bool,
    after_step: Callable[[], None] | None = None,
) -> Callable[[], float]:
    """One step of the project's loop: train_one_epoch over a one-batch generator from Feed,
    with the schedule and then ``after_step`` (train() updates its weight average there)."""
    scheduler = make_scheduler(net.optimizer, s.params, 1_000_000)

    def step() -> float:
        fed = [0.0]

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            t = time.perf_counter()  # on CUDA: host time to queue the feed's kernels
            batch = s.feed.batch(images, masks, next(s.order), s.aug_gen)
            fed[0] = time.perf_counter() - t
            yield batch

        with keep_freed_memory(DEV, net.keep_memory):
            train_one_epoch(
                net.model, batches(), 1, net.optimizer, scheduler, s.loss_fn, 1, bf16, DEV,
                progress=False, after_step=after_step, forward=net.forward,
            )  # fmt: skip
        return fed[0]

    return step


def epoch_orders(n: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of indices as train() deals them (``epoch_order``), epoch after epoch."""
    rt, gen = Runtime(0, 1, 0, CPU), torch.Generator().manual_seed(seed)
    while True:
        yield from epoch_order(n, n // batch, batch, rt, gen)


def step_flops(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of forward + backward of one training step (a copy, so the model is untouched)."""
    m = copy.deepcopy(model)
    from torch.utils.flop_counter import FlopCounterMode  # lazily: ~75 MB, not in (d)'s child

    with FlopCounterMode(display=False) as counter:
        loss_fn(m(x), y).backward()
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class Variant:
    """``{eager|compiled[:mode]}-{cl|nchw}[-fused][-bf16][-t<threads>]``, e.g. ``compiled-cl-t1``.

    Write ``_`` for ``-`` inside a compile mode: ``compiled:max_autotune-cl``."""

    name: str
    mode: str | None  # torch.compile mode, None = eager
    channels_last: bool
    fused: bool
    threads: int | None  # None = --threads
    bf16: bool = False  # bf16 autocast (float32 otherwise)

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.split("-")
        how, fmt, rest = parts[0], (parts[1:2] or [""])[0], parts[2:]
        how, _, mode = how.partition(":")
        fused = "fused" in rest
        bf16 = "bf16" in rest
        threads = [r for r in rest if r.startswith("t") and r[1:].isdigit()]
        if (
            how not in ("eager", "compiled")
            or fmt not in ("cl", "nchw")
            or len(rest) != fused + bf16 + len(threads)
            or len(threads) > 1
            or (mode and how == "eager")
        ):
            raise SystemExit(
                f"bad variant {name!r}: expected "
                "{eager|compiled[:mode]}-{cl|nchw}[-fused][-bf16][-t<threads>], e.g. "
                "compiled-cl-t1"
            )
        mode = (mode.replace("_", "-") or "default") if how == "compiled" else None
        n = int(threads[0][1:]) if threads else None
        return cls(name, mode, fmt == "cl", fused, n, bf16)

    def label(self, threads: int) -> str:
        how = "eager" if self.mode is None else f"compile({self.mode})"
        fmt = "channels_last" if self.channels_last else "NCHW"
        fused = " +fused AdamW" if self.fused else ""
        thr = f" {self.threads} thr" if self.threads not in (None, threads) else ""
        return f"bare {how} {fmt}{fused}{' bf16' if self.bf16 else ''}{thr}"


def fresh_model(s: Setup, fmt: torch.memory_format = torch.channels_last) -> nn.Module:
    model = build_model(s.arch, ModelsParams(), NUM_CLASSES)
    model.load_state_dict(s.init_state)
    return model.to(DEV, memory_format=fmt)


def project_net(s: Setup, compile: bool) -> Net:
    """A fresh model with the optimizer and forward pass train() gives it for ``compile``."""
    p = s.params.model_copy(update={"compile": compile})
    model = fresh_model(s)
    forward = forward_loss(model, s.loss_fn, DEV, p.bf16, compile)
    return Net(model, forward, make_optimizer(model, p), keep_memory=compile)


def project_contenders(
    s: Setup, images: torch.Tensor, masks: torch.Tensor, threads: int, compile: bool
) -> list[Contender]:
    """The project's step as train() runs it with ``train.compile``: bare, and the real loop
    (Feed, augmentation, train_one_epoch, schedule and weight average) on a model of its own."""
    check_compile(compile, DEV)
    bf16 = precision(DEV, s.params.bf16) != "float32"  # as training runs it (train.bf16)
    dtype, tag = (torch.bfloat16, "bf16") if bf16 else (torch.float32, "fp32")
    how = f"{'compiled' if compile else 'eager'} channels_last {tag}"
    net = project_net(s, compile)
    bare = Contender(
        f"bare {how} (compile: {str(compile).lower()})", bare_step(net, s.x, s.y), threads, dtype,
        compiled=compile, profile=True,
    )  # fmt: skip
    net = project_net(s, compile)
    ema = weight_average(net.model, s.params.ema_epochs, 100)
    after = None if ema is None else partial(ema.update_parameters, net.model)
    real = Contender(
        f"real loop {how} (Feed+augment+EMA)", real_step(net, s, images, masks, bf16, after),
        threads, dtype, real=True, compiled=compile, twin=bare,
    )  # fmt: skip
    return [bare, real]  # bare first: its first call is the one that compiles


def variant_contenders(
    s: Setup, args: argparse.Namespace, images: torch.Tensor, masks: torch.Tensor
) -> list[Contender]:
    """``--variants`` of the bare step, and the real loop driving the first compiled one."""
    out: list[Contender] = []
    p, t = s.params, args.threads
    for v in args.variants:
        fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        m = fresh_model(s, fmt)
        opt = torch.optim.AdamW(
            param_groups(m, p.weight_decay), lr=p.lr, fused=True if v.fused else None
        )
        mode = None if v.mode == "default" else v.mode
        compiled = m if v.mode is None else torch.compile(m, mode=mode)
        net = Net(m, eager_forward(compiled, s.loss_fn, DEV, v.bf16), opt)
        step = bare_step(net, s.x.contiguous(memory_format=fmt), s.y)
        vt, dtype = v.threads or t, torch.bfloat16 if v.bf16 else torch.float32
        variant = Contender(v.label(t), step, vt, dtype, compiled=v.mode is not None)
        out.append(variant)
        first_compiled = not any(c.real and c.compiled for c in out)
        if v.mode is not None and v.channels_last and args.real_compiled and first_compiled:
            step = real_step(net, s, images, masks, v.bf16)
            label = variant.label.replace("bare ", "real loop, ", 1)
            out.append(Contender(label, step, vt, dtype, real=True, compiled=True, twin=variant))
    return out


def time_contenders(
    arch: str, contenders: list[Contender], args: argparse.Namespace, ceiling: Ceiling
) -> None:
    """Warm-up steps, then ``--steps`` rounds of one step each, round robin, measuring the
    ceilings of every (threads, precision) after each round."""
    for c in contenders:
        log(f"{arch}: warm-up {c.label}")
        for i in range(args.warmup):
            wall, _, _, _ = c.run()
            if i == 0:
                c.first_s = wall
    for r in range(args.steps):
        for c in contenders:
            wall, cpu, fed, faults = c.run()
            c.wall.append(wall)
            c.cpu.append(cpu)
            c.feed.append(fed)
            c.faults.append(faults)
        for n, dtype in sorted({(c.threads, c.dtype) for c in contenders}, key=str):
            ceiling.measure(n, dtype, reps=args.ceiling_reps)
        log(f"{arch}: round {r + 1}/{args.steps} done, load {load_str()}")
    torch.set_num_threads(args.threads)


def bench_arch(
    arch: str,
    args: argparse.Namespace,
    images: torch.Tensor,
    masks: torch.Tensor,
    ceiling: Ceiling,
) -> dict[str, Any]:
    """Sections (a) and (b) for one architecture."""
    p = TrainParams(batch_size=args.batch, threads=args.threads)
    torch.manual_seed(p.seed)
    init = build_model(arch, ModelsParams(), NUM_CLASSES).to(DEV, memory_format=torch.channels_last)
    s = Setup(
        arch, p, copy.deepcopy(init.state_dict()),
        make_loss(p.class_weights, p.label_smoothing, p.dice_weight, DEV),
        Feed(DEV, p.channels_last, p.augment),
        epoch_orders(len(images), args.batch, p.seed),
        torch.Generator().manual_seed(p.seed * 7919 + 1),
        *Feed(DEV, True).batch(images, masks, torch.arange(args.batch)),
    )  # fmt: skip
    contenders = [
        c
        for compile in args.compile
        for c in project_contenders(s, images, masks, args.threads, compile)
    ]
    if arch in args.explore:
        contenders += variant_contenders(s, args, images, masks)
    flops = step_flops(init, s.loss_fn, s.x, s.y)
    fwd_gflops = gflops_per_image(copy.deepcopy(init), args.size)
    time_contenders(arch, contenders, args, ceiling)
    breakdowns = {c.label: op_breakdown(c, args.profile_steps) for c in contenders if c.profile}
    return {
        "arch": arch, "flops": flops, "fwd_gflops": fwd_gflops, "contenders": contenders,
        "breakdowns": breakdowns,
    }  # fmt: skip


# ------------------------------------------------------------------------- per-op breakdown
PHASES = ("step.forward", "step.backward", "step.optimizer")  # bare_step's record_function marks


def _phase(event: Any) -> str:
    while event is not None:
        if event.name in PHASES:
            return event.name.removeprefix("step.")
        event = event.cpu_parent
    return "other"


def _is_conv(name: str) -> bool:
    """A convolution run by the library (forward, backward, transposed); not a fused kernel."""
    return name.startswith(("aten::", "mkldnn::", "cudnn::")) and "conv" in name


def op_breakdown(c: Contender, steps: int) -> dict[str, Any]:
    """Self time per (phase, op) of the least disturbed of ``steps`` profiled steps of ``c``
    (torch.profiler; on CUDA the GPU time of each op's kernels), largest first, and the
    convolutions' share of it."""
    found = [_profiled_step(c) for _ in range(steps)]
    return min(found, key=lambda b: b["total_ms"])


def _profiled_step(c: Contender) -> dict[str, Any]:
    cuda = DEV.type == "cuda"
    acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    torch.set_num_threads(c.threads)
    with profile(activities=acts) as prof:
        c.step()
        sync()
    ms: dict[tuple[str, str], float] = {}
    calls: dict[tuple[str, str], int] = {}
    for ev in prof.events():
        if ev.name in PHASES:
            continue
        key = (_phase(ev), ev.name)
        self_us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        ms[key] = ms.get(key, 0.0) + self_us / 1000
        calls[key] = calls.get(key, 0) + 1
    rows = sorted(((*k, v, calls[k]) for k, v in ms.items() if v > 0), key=lambda r: -r[2])
    conv = sum(v for (_, name), v in ms.items() if _is_conv(name))
    return {"total_ms": sum(ms.values()), "conv_ms": conv, "rows": rows}


def print_breakdown(
    label: str, b: dict[str, Any], flops: float, ceil: float, top: int
) -> dict[str, float]:
    total = b["total_ms"]
    where = "GPU" if DEV.type == "cuda" else "CPU"
    print(f"    {label}: top {top} ops by self {where} time of one profiled step ({total:.0f} ms)")
    print(f"      {'phase':9s} {'op':58s} {'ms':>8s} {'share':>6s} {'calls':>5s}")
    for phase, name, v, n in b["rows"][:top]:
        short = name if len(name) <= 58 else f"{name[:38]}..{name[-18:]}"
        print(f"      {phase:9s} {short:58s} {v:8.1f} {v / total:6.1%} {n:5d}")
    conv_rate = flops / (b["conv_ms"] / 1000) / 1e9 if b["conv_ms"] else math.nan
    share = b["conv_ms"] / total
    print(
        f"      convolutions (forward + backward) {b['conv_ms']:.0f} ms = {share:.1%} of it, at "
        f"{conv_rate:.0f} GFLOP/s = {conv_rate / ceil:.2f} of the ceiling: the bound on the step's "
        "ratio while they run at that rate"
    )
    return {"conv_share": share, "conv_vs_ceiling": conv_rate / ceil}


# ----------------------------------------------------------------------------------- report
def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _paired(real: Contender) -> float:
    """Median over rounds of bare time / real time: each pair ran back to back."""
    assert real.twin is not None
    return _median([b / r for b, r in zip(real.twin.wall, real.wall, strict=True)])


def _eff(c: Contender, flops: float, ceiling: Ceiling) -> float:
    """GFLOP/s of the best step / the ceiling of its precision and threads."""
    return flops / c.best / 1e9 / ceiling.of(c.threads, c.dtype)


def print_table(results: list[dict[str, Any]], ceiling: Ceiling, args: argparse.Namespace) -> None:
    head = (
        f"{'arch':8s} {'contender':52s} {'thr':>3s} {'best s':>7s} {'med s':>6s} {'img/s':>6s} "
        f"{'cores':>5s} "
        f"{'kflt':>5s} {'feed ms':>7s} {'GFLOP/s':>7s} {'/ceil':>5s} {'first s':>7s}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        arch, flops = res["arch"], res["flops"]
        for c in res["contenders"]:
            row = (
                f"{arch:8s} {c.label:52s} {c.threads:3d} {c.best:7.2f} {_median(c.wall):6.2f} "
                f"{args.batch / c.best:6.2f} {c.best_cores:5.2f} {_median(c.faults) / 1000:5.0f} "
            )
            if c.real:
                row += f"{1000 * min(c.feed):7.1f} {'':13s}"
            else:
                row += f"{'':7s} {flops / c.best / 1e9:7.1f} {_eff(c, flops, ceiling):5.2f}"
            print(f"{row} {c.first_s:7.1f}")
        print(
            f"{'':8s} (train step = {flops / 1e9:.0f} GFLOP fwd+bwd at batch {args.batch}; "
            f"forward {res['fwd_gflops']:.2f} GFLOP/image)"
        )


def report_a(res: dict[str, Any]) -> dict[str, float]:
    arch, cs = res["arch"], res["contenders"]
    out = {}
    for real in (c for c in cs if c.real and c.twin is not None):
        ratio = _paired(real)
        # Within each real step: the share of its wall time not spent making the batch. Both
        # parts of one step see the same load, so this is steadier than the two-sided ratio.
        in_loop = _median([1 - f / w for f, w in zip(real.feed, real.wall, strict=True)])
        print(
            f"(a) {arch:8s} {real.label} / {real.twin.label} = {ratio:.3f} (median of paired "
            f"steps; best/best {real.twin.best / real.best:.3f}) (target >= {TARGETS['a']}) "
            f"{mark(ratio >= TARGETS['a'])}; non-feed share of the real steps (median) "
            f"{in_loop:.3f}"
        )
        out.setdefault("a", ratio)
        out.setdefault("a_non_feed_share", in_loop)
        out[f"a[{real.label}]"] = ratio
    return out


def report_b(res: dict[str, Any], ceiling: Ceiling, args: argparse.Namespace) -> dict[str, Any]:
    arch, flops, cs = res["arch"], res["flops"], res["contenders"]
    target = arch == "unet" and args.size == 128 and args.batch == 32
    out: dict[str, Any] = {}
    for c in (c for c in cs if not c.real):
        e = _eff(c, flops, ceiling)
        ceil = ceiling.of(c.threads, c.dtype)
        dt = str(c.dtype).removeprefix("torch.")
        verdict = f" (target >= {TARGETS['b']}) {mark(e >= TARGETS['b'])}" if target else ""
        compile_s = max(0.0, c.first_s - c.best)
        extra = f", first call {c.first_s:.0f} s (compile ~{compile_s:.0f} s)" if c.compiled else ""
        mm = flops / c.best / 1e9 / ceiling.best[(c.threads, c.dtype)]["mm"]
        print(
            f"(b) {arch:8s} {c.label}: {flops / c.best / 1e9:.0f} GFLOP/s / {dt} ceiling "
            f"{ceil:.0f} ({c.threads} thr) = {e:.3f}{verdict} (/mm alone {mm:.3f}){extra}"
        )
        out.setdefault("b", e)
        out[f"b[{c.label}]"] = e
    for label, b in res["breakdowns"].items():
        c = next(c for c in cs if c.label == label)
        ceil = ceiling.of(c.threads, c.dtype)
        conv = print_breakdown(label, b, flops, ceil, args.top_ops)
        out[f"conv[{label}]"] = conv
    return out


def report_ab(results: list[dict[str, Any]], ceiling: Ceiling, args: argparse.Namespace) -> dict:
    ceiling.print()
    print_table(results, ceiling, args)
    print()
    summary: dict[str, Any] = {}
    for res in results:
        summary[res["arch"]] = {**report_a(res), **report_b(res, ceiling, args)}
    return summary


# ----------------------------------------------------------------------------- (c) feed
def bench_feed(
    args: argparse.Namespace, raw: Path, names: list[str], images: torch.Tensor, masks: torch.Tensor
) -> dict[str, Any]:
    aug_gen = torch.Generator().manual_seed(0)
    project = "Feed.batch + augment (project)"
    feeds = {  # label: (feed, threads)
        project: (Feed(DEV, True, AugmentParams()), args.threads),
        "Feed.batch, no augment": (Feed(DEV, True, None), args.threads),
    }
    if args.threads != 1 and DEV.type == "cpu":
        feeds["Feed.batch + augment, 1 thread"] = (Feed(DEV, True, AugmentParams()), 1)
    order = epoch_orders(len(images), args.batch, 0)
    n_batches = len(names) // args.batch
    # The naive loader reads real Oxford photos when they are here: decoding cost depends on the
    # photos' size, and the synthetic ones are smaller than the real ~500x375.
    naive_raw, naive_names = raw, names
    if args.naive_data and (args.naive_data / "annotations" / "trainval.txt").is_file():
        naive_raw, naive_names = args.naive_data, raw_names(args.naive_data)
        naive_names = [
            n for n in naive_names if Image.open(image_path(naive_raw, n)).format == "JPEG"
        ]
    sides = sorted(max(Image.open(image_path(naive_raw, n)).size) for n in naive_names)
    ds = NaivePets(naive_raw, naive_names, args.size)
    loaders = {
        f"naive DataLoader, num_workers={w}": DataLoader(
            ds,
            batch_size=args.batch,
            shuffle=True,
            num_workers=w,
            persistent_workers=w > 0,
            drop_last=True,
        )
        for w in args.naive_workers
    }

    def feed_pass(feed: Feed, threads: int) -> float:
        torch.set_num_threads(threads)
        sync()
        t = time.perf_counter()
        for _ in range(n_batches):
            feed.batch(images, masks, next(order), aug_gen)
        sync()
        return time.perf_counter() - t

    def loader_pass(loader: DataLoader) -> float:
        t = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - t

    for loader in loaders.values():  # start workers, warm the OS file cache
        loader_pass(loader)
    for feed, threads in feeds.values():
        feed_pass(feed, threads)
    runs: dict[str, list[float]] = {k: [] for k in (*feeds, *loaders)}
    for _ in range(args.feed_passes):  # interleaved, best of N
        for k, (feed, threads) in feeds.items():
            runs[k].append(feed_pass(feed, threads))
        for k, loader in loaders.items():
            runs[k].append(loader_pass(loader))
    del loaders
    torch.set_num_threads(args.threads)
    n = n_batches * args.batch
    n_naive = len(naive_names) // args.batch * args.batch
    rate = {k: (n if k in feeds else n_naive) / min(v) for k, v in runs.items()}
    print(
        f"\n(c) batch feed ({n} images in {'GPU ' if DEV.type == 'cuda' else ''}memory) vs naive "
        "per-sample DataLoader over "
        f"{n_naive} JPEGs in {naive_raw} (long side median {sides[len(sides) // 2]} px),"
    )
    print(f"    {args.size} px, batch {args.batch}, best of {args.feed_passes} interleaved passes")
    for k, v in rate.items():
        print(f"    {k:40s} {v:9.1f} images/s  ({1000 * args.batch / v:7.2f} ms/batch)")
    naive = max(v for k, v in rate.items() if k.startswith("naive"))
    ratio = rate[project] / naive
    print(
        f"(c) Feed.batch+augment / best naive DataLoader = {ratio:.1f}x "
        f"(target >= {TARGETS['c']:.0f}x) {mark(ratio >= TARGETS['c'])}"
    )
    floor = rate["Feed.batch, no augment"] / naive
    print(
        f"    ceiling: Feed.batch without augmentation / best naive = {floor:.1f}x (gathering the "
        "rows and writing the float batch alone; no augmenting feed can beat it)"
    )
    return {"c": ratio, "c_no_augment": floor, "rates": rate}


# ---------------------------------------------------------------------------- (d) memory
def vm_hwm() -> int:
    """Peak RSS in bytes of this process image (VmHWM; starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def memory_child(spec: dict[str, Any]) -> None:
    """Runs in a fresh interpreter: the real train(), limited to a few steps (see docstring)."""
    from petseg import train as train_mod
    from petseg.train import TrainPaths

    work = Path(spec["work"])
    before = vm_hwm()
    real_order, real_evaluate = train_mod.epoch_order, train_mod.evaluate

    def few_steps(n, steps, batch, rt, gen):  # the shuffle of a full epoch, first rows only
        return real_order(n, steps, batch, rt, gen)[: spec["steps"]]

    def few_val(model, images, masks, indices, feed, batch_size, *rest):
        return real_evaluate(
            model, images, masks, indices[: spec["val_batches"] * batch_size], feed, batch_size,
            *rest,
        )  # fmt: skip

    train_mod.epoch_order, train_mod.evaluate = few_steps, few_val
    arch = spec["arch"]
    t = time.perf_counter()
    result = train_mod.train(
        arch,
        TrainParams(
            epochs=1, batch_size=spec["batch"], threads=spec["threads"], compile=spec["compile"]
        ),
        getattr(ModelsParams(), arch),
        TrackingParams(experiment="bench-memory", log_model=False, system_metrics=False),
        TrainPaths(
            Path(spec["prepared"]),
            work / f"{arch}.pt",
            work / f"{arch}.json",
            work / f"{arch}.csv",
            work / "checkpoints" / arch,
        ),
        data_source="synthetic-tiled",
        progress=False,
    )
    out = {
        "arch": arch,
        "peak_bytes": vm_hwm(),
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "before_train_bytes": before,
        "seconds": time.perf_counter() - t,
        "train_images_per_s": result["train_images_per_s"],
        "device": result.get("hardware", ""),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0,
    }
    print("MEMORY-RESULT " + json.dumps(out), flush=True)


def bench_memory(
    args: argparse.Namespace, work: Path, images: np.ndarray, masks: np.ndarray
) -> dict[str, Any]:
    prepared = write_large_prepared(work / "prepared_large", images, masks, REAL_SPLIT_SIZES)
    array_bytes = sum(f.stat().st_size for f in prepared.glob("*.npy"))
    loaded = sum(
        (prepared / f"{s}_{k}.npy").stat().st_size
        for s in ("train", "val")
        for k in ("images", "masks")
    )
    print(
        f"\n(d) peak RSS of the real train() in a fresh process: {sum(REAL_SPLIT_SIZES.values())} "
        f"images at {args.size} px ({array_bytes / GIB:.2f} GiB of arrays on disk, "
        f"{loaded / GIB:.2f} GiB of them train/val, read row by row by train()), "
        f"batch {', '.join(map(str, args.mem_batches))} (the verdict is the batch of "
        f"the real recipe, {TrainParams().batch_size}: what `make real` trains with);"
    )
    print(
        f"    limited to {args.mem_steps} train steps and {args.mem_val_batches} validation "
        f"batches by monkeypatching epoch_order/evaluate inside the child; train.compile: "
        f"{str(args.mem_compile).lower()}"
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    env["PYTHONWARNINGS"] = "ignore"
    out: dict[str, Any] = {}
    default_batch = TrainParams().batch_size  # the real recipe's: what `make real` trains with
    for arch, batch in [(a, b) for a in args.mem_archs for b in args.mem_batches]:
        spec = {
            "arch": arch,
            "work": str(work),
            "prepared": str(prepared),
            "steps": args.mem_steps,
            "val_batches": args.mem_val_batches,
            "batch": batch,
            "threads": args.threads,
            "compile": args.mem_compile,
        }
        log(f"(d) {arch}, batch {batch}: training in a child process")
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
            cwd=work,  # MLflow's artifact folder and the git lookup stay in the work folder
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("MEMORY-RESULT ")), None)
        if proc.returncode or line is None:
            print(f"    {arch}: child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            continue
        res = json.loads(line.split(" ", 1)[1])
        peak, maxrss = res["peak_bytes"] / GIB, res["maxrss_bytes"] / GIB
        out[f"{arch}@{batch}"] = peak
        role = "the real recipe's train.batch_size" if batch == default_batch else "context"
        print(
            f"(d) {arch:8s} batch {batch:3d} ({role}) peak RSS {peak:.2f} GiB (VmHWM; "
            f"ru_maxrss {maxrss:.2f} GiB; after imports, before train(): "
            f"{res['before_train_bytes'] / GIB:.2f} GiB; "
            f"child ran {res['seconds']:.0f} s on {res['device']}) "
            f"(target <= {TARGETS['d_gib']} GiB) {mark(peak <= TARGETS['d_gib'])}"
        )
        if res["cuda_peak_bytes"]:
            gpu_peak = res["cuda_peak_bytes"] / GIB
            print(f"    {arch:8s} batch {batch:3d} peak GPU memory {gpu_peak:.2f} GiB (allocated)")
    print(
        "    (ru_maxrss survives fork+exec: a child of a big parent reports at least the parent's"
        " peak, hence VmHWM, and (d) runs first while this process is still small)"
    )
    return out


# ------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per contender first")
    parser.add_argument("--archs", default="strided,unpool,unet")
    parser.add_argument("--explore", default="unet", help="archs timed with every --variants too")
    parser.add_argument(
        "--compile",
        default="false,true",
        help="train.compile values of the project's contenders, comma-separated",
    )
    parser.add_argument(
        "--variants",
        default="eager-cl,eager-cl-bf16-t1",
        help="comma-separated {eager|compiled[:mode]}-{cl|nchw}[-fused][-t<threads>]",
    )
    parser.add_argument(
        "--no-real-compiled",
        dest="real_compiled",
        action="store_false",
        help="skip the real loop driving the first compiled channels_last variant",
    )
    parser.add_argument("--threads", type=int, default=0, help="0 = all available cores")
    parser.add_argument("--top-ops", type=int, default=10, help="rows of the per-op breakdown")
    parser.add_argument(
        "--profile-steps", type=int, default=3, help="profiled steps; the fastest is broken down"
    )
    parser.add_argument(
        "--ceiling-reps", type=int, default=2, help="calls of each ceiling product per round"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where (a)-(c) run models and feed; (d) trains with train.device auto",
    )
    parser.add_argument(
        "--naive-workers",
        default="0,2",
        help="num_workers of the naive DataLoaders in (c), comma-separated (best one counts)",
    )
    parser.add_argument("--images", type=int, default=256, help="synthetic raw pairs for (a)-(c)")
    parser.add_argument(
        "--raw-sides",
        default=f"{SyntheticParams().min_size},{SyntheticParams().max_size}",
        help="min,max side of the synthetic JPEGs (real Oxford photos are mostly ~500x375)",
    )
    parser.add_argument("--feed-passes", type=int, default=3)
    parser.add_argument(
        "--naive-data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/oxford-pets-sample",
        help="real photos in the official layout for the naive loader of (c); absent: synthetic",
    )
    parser.add_argument("--mem-archs", default="strided,unpool,unet")
    parser.add_argument(
        "--mem-batches",
        default=None,
        help="batch sizes for (d), comma-separated (default: the real recipe's batch_size and "
        "--batch)",
    )
    parser.add_argument("--mem-steps", type=int, default=2)
    parser.add_argument("--mem-val-batches", type=int, default=2)
    parser.add_argument(
        "--mem-compile", action="store_true", help="(d) trains with train.compile: true"
    )
    parser.add_argument("--parts", default="abcd", help="sections to run; a and b run together")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--warm-compile-cache", action="store_true", help="reuse inductor's cache")
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios here")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.threads = args.threads or cores or 1
    global DEV
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    DEV = torch.device(args.device)
    args.naive_workers = [int(w) for w in args.naive_workers.split(",") if w.strip()]
    torch.set_num_threads(args.threads)
    for key in ("archs", "explore", "variants", "mem_archs"):
        setattr(args, key, [s for s in getattr(args, key).split(",") if s])
    args.variants = [Variant.parse(v) for v in args.variants]
    args.compile = [{"false": False, "true": True}[v.strip()] for v in args.compile.split(",")]
    batches = args.mem_batches or f"{TrainParams().batch_size},{args.batch}"
    args.mem_batches = list(dict.fromkeys(int(b) for b in batches.split(",") if b.strip()))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="petseg-train-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.warm_compile_cache:  # compile time from a cold cache, as a first training run
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    # Name each compiled kernel in the breakdown (one profiler mark per kernel call: negligible
    # next to a step; the generated code differs from train()'s by these marks only).
    torch._inductor.config.cpp.enable_kernel_profile = True

    t_start = time.perf_counter()
    gpu = f", {torch.cuda.get_device_name(DEV)}" if DEV.type == "cuda" else ""
    print(
        f"petseg train throughput: torch {torch.__version__}, {cpu_name()}{gpu}, {cores} cores, "
        f"{args.threads} threads, size {args.size}, batch {args.batch}, {args.steps} timed steps "
        f"after {args.warmup} warm-up per contender"
    )
    omp = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
    print(f"load average at start (1/5/15 min): {load_str()}; OpenMP env: {omp or 'defaults'}")
    try:
        log(f"generating {args.images} synthetic pairs in {work}")
        lo, hi = (int(v) for v in args.raw_sides.split(","))
        raw = make_raw(work, args.images, (lo, hi))
        names = raw_names(raw)
        images_np, masks_np = decode_all(raw, names, args.size)
        # As train() holds them: host arrays on a CPU, copies in GPU memory on CUDA.
        images, masks = on_device((torch.from_numpy(images_np), torch.from_numpy(masks_np)), DEV)
        summary: dict[str, Any] = {}
        if "d" in args.parts:  # first: a child inherits ru_maxrss from its parent
            summary["d"] = bench_memory(args, work, images_np, masks_np)
        if "a" in args.parts or "b" in args.parts:
            ceiling = Ceiling()
            bf16 = precision(DEV, TrainParams().bf16) != "float32"
            ceiling.measure(args.threads, torch.bfloat16 if bf16 else torch.float32, reps=2)
            results = [bench_arch(a, args, images, masks, ceiling) for a in args.archs]
            summary["ab"] = report_ab(results, ceiling, args)
            del results
        if "c" in args.parts:
            summary["c"] = bench_feed(args, raw, names, images, masks)
        if args.json:
            summary["load_average_end"] = os.getloadavg()
            args.json.write_text(json.dumps(summary, indent=2, default=str))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_start
    print(f"\nload average at end (1/5/15 min): {load_str()}; total {total:.0f} s")


if __name__ == "__main__":
    main()

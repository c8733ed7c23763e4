"""Step costs that other jobs on the machine cannot reorder.

A single wall-clock measurement per network (its training seconds, its inference images/s) ranks
the networks by whatever else the machine was doing at the time. Here every network's training step
(forward, loss, backward, AdamW step) and inference batch (BatchNorm folded, argmax) run in one
process, on the same batch and threads, interleaved round-robin with the order rotated each round:
a disturbance hits every network of a round alike, so the ratio of each network's time to the
fastest network's time *in the same round* is stable even when the times themselves are not. The
quartiles of those per-round ratios are the spread the report uses to call a difference noise.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from petseg import NUM_CLASSES
from petseg.device import autocast
from petseg.losses import make_loss
from petseg.models.inference import fuse_for_inference
from petseg.results import CostSetup, StepCost, Timing

STEPS = ("train_step", "inference_batch")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, bf16: bool
) -> Callable[[], None]:
    """One step of a training copy of ``model`` (the recipe's loss shape: cross-entropy + Dice)."""
    net = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = make_loss(None, 0.0, 1.0, device)

    def step() -> None:
        with autocast(device, bf16):
            logits = net(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _inference_batch(
    model: nn.Module, x: torch.Tensor, device: torch.device, bf16: bool
) -> Callable[[], None]:
    net = fuse_for_inference(model.to(device)).to(memory_format=torch.channels_last)

    @torch.no_grad()
    def step() -> None:
        with autocast(device, bf16):
            net(x).argmax(1)

    return step


MIN_MS = 20.0  # each timing spans at least this long: one tiny step is scheduler noise


def _repeats(steps: Mapping[str, Callable[[], None]], device: torch.device) -> int:
    """How many calls make one timing: enough that the fastest network's takes MIN_MS (every
    network gets the same count, so their times stay comparable)."""
    fastest = float("inf")
    for step in steps.values():
        t0 = time.perf_counter()
        step()
        _sync(device)
        fastest = min(fastest, 1000 * (time.perf_counter() - t0))
    return max(1, math.ceil(MIN_MS / max(fastest, 1e-3)))


def _round_robin(steps: Mapping[str, Callable[[], None]], rounds: int, device) -> np.ndarray:
    """(rounds, networks) milliseconds per call; each round times every step once, starting one
    further along, after a warm-up call of each (kernel selection, allocation)."""
    names = list(steps)
    for name in names:
        steps[name]()
    _sync(device)
    repeats = _repeats(steps, device)
    ms = np.zeros((rounds, len(names)))
    for r in range(rounds):
        for k in range(len(names)):
            i = (r + k) % len(names)
            t0 = time.perf_counter()
            for _ in range(repeats):
                steps[names[i]]()
            _sync(device)
            ms[r, i] = 1000 * (time.perf_counter() - t0) / repeats
    return ms


def _timings(ms: np.ndarray, names: list[str]) -> tuple[str, dict[str, Timing]]:
    """The reference is the network fastest relative to the others round by round (the lowest
    median of its time over the round's fastest time); every ratio is to it, per round."""
    ref = int(np.argmin(np.median(ms / ms.min(axis=1, keepdims=True), axis=0)))
    ratios = ms / ms[:, [ref]]
    q1, q2, q3 = np.percentile(ratios, [25, 50, 75], axis=0)
    median = np.median(ms, axis=0)
    return names[ref], {
        n: Timing(ms=float(median[i]), ratio=float(q2[i]), ratio_low=float(q1[i]),
                  ratio_high=float(q3[i]))
        for i, n in enumerate(names)
    }  # fmt: skip


def time_steps(
    models: Mapping[str, nn.Module],
    *,
    batch: int,
    image_size: int,
    rounds: int,
    device: torch.device,
    bf16: bool,
    seed: int = 0,
) -> tuple[dict[str, StepCost], CostSetup]:
    """Every network's training step and inference batch, timed round-robin (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch, image_size, image_size), generator=gen).to(device)
    names = list(models)
    found, reference = {}, {}
    for step in STEPS:
        if step == "train_step":
            run = {n: _train_step(m, x, y, device, bf16) for n, m in models.items()}
        else:
            run = {n: _inference_batch(m, x, device, bf16) for n, m in models.items()}
        reference[step], found[step] = _timings(_round_robin(run, rounds, device), names)
        del run
    costs = {n: StepCost(train_step=found[STEPS[0]][n], inference_batch=found[STEPS[1]][n])
             for n in names}  # fmt: skip
    setup = CostSetup(
        batch=batch,
        image_size=image_size,
        rounds=rounds,
        threads=torch.get_num_threads(),
        device=device.type,
        reference=reference,
    )
    return costs, setup

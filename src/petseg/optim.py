"""The optimisation recipe's parts: AdamW parameter groups, the learning-rate schedule and the
exponential moving average of the weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from petseg.config import TrainParams


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (decaying them only hurts)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    # train.compile: the fused kernel, one pass over weights, gradients and moments
    fused = True if params.compile else None
    return torch.optim.AdamW(param_groups(model, params.weight_decay), lr=params.lr, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.schedule``, stepped once per optimizer step."""
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


def weight_average(model: nn.Module, epochs: float, steps: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers over about ``epochs``
    epochs of ``steps`` optimizer steps (decay 1 - 1 / (epochs x steps) per step), or None for 0.

    Expressed in epochs, not as a per-step decay, so one value means the same horizon on a small
    sample and on the full data set, whatever the number of steps per epoch."""
    if epochs <= 0:
        return None
    decay = 1.0 - 1.0 / max(1.0, epochs * steps)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

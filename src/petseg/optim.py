"""The optimisation recipe's parts: AdamW parameter groups (a pretrained encoder's at its own
learning rate), the learning-rate schedule and the exponential moving average of the weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from petseg.config import TrainParams


def param_groups(
    model: nn.Module,
    weight_decay: float,
    encoder: nn.Module | None = None,
    encoder_lr: float | None = None,
) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (decaying them only hurts). The
    parameters of ``encoder`` (a pretrained one) get two groups of their own at ``encoder_lr``,
    after the network's two, which take the optimizer's learning rate."""
    mine = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    parts = [("network", [p for p in model.parameters() if id(p) not in mine], {})]
    if encoder is not None:
        parts.append(("encoder", list(encoder.parameters()), {"lr": encoder_lr}))
    groups = []
    for name, members, lr in parts:
        decay = [p for p in members if p.ndim > 1]
        no_decay = [p for p in members if p.ndim <= 1]
        groups += [
            {"params": decay, "weight_decay": weight_decay, "name": name, **lr},
            {"params": no_decay, "weight_decay": 0.0, "name": name, **lr},
        ]
    return groups


def make_optimizer(
    model: nn.Module, params: TrainParams, encoder: nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW at ``train.lr``; ``encoder`` (a pretrained one) at ``lr x train.encoder_lr_mult``.
    With ``train.compile`` the fused kernel: one pass over weights, gradients and moments."""
    encoder_lr = params.lr * params.encoder_lr_mult
    groups = param_groups(model, params.weight_decay, encoder, encoder_lr)
    return torch.optim.AdamW(groups, lr=params.lr, fused=True if params.compile else None)


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.schedule``, stepped once per optimizer step; each parameter group follows it from
    its own learning rate (a pretrained encoder's stays ``train.encoder_lr_mult`` x the rest)."""
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
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

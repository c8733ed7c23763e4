"""The training loss: cross-entropy (optionally weighted and smoothed) plus a soft Dice term."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the batch-wide soft Dice; helps thin classes such as the border."""
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


def make_loss(
    class_weights: list[float] | None,
    label_smoothing: float,
    dice_weight: float,
    device: torch.device,
) -> LossFn:
    """``train.class_weights``, ``train.label_smoothing`` and ``train.dice_weight`` as one loss,
    computed in float32 whatever the logits' precision."""
    weight = torch.tensor(class_weights, device=device) if class_weights else None

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(
            logits.float(), target, weight=weight, label_smoothing=label_smoothing
        )
        if dice_weight:
            loss = loss + dice_weight * soft_dice_loss(logits, target)
        return loss

    return loss_fn

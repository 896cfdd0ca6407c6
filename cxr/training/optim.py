"""The optimiser and the learning-rate schedule of a training run."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["make_optimizer", "make_scheduler", "lr_factor"]


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, layer_decay: float = 1.0
) -> torch.optim.Optimizer:
    """The optimiser of ``model``'s trainable parameters; with ``layer_decay`` below 1, one parameter group per
    layer (timm's grouping), each layer's learning rate ``layer_decay`` times the next one's, the head's ``lr``,
    and no weight decay on biases and norm parameters."""
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if layer_decay < 1:
        from timm.optim import param_groups_layer_decay  # timm's optimiser package loads only when asked for

        params = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
        for group in params:
            group["lr"] = lr * group["lr_scale"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier at optimiser step ``step``: linear warm-up over ``warmup_steps`` (from
    1/``warmup_steps``), then constant or a cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` per optimiser step over ``epochs`` of ``steps_per_epoch``."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, schedule))

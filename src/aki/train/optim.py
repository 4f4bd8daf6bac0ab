"""AdamW with weight-decay groups and a warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: matrices decay, 1-D tensors (biases, norms) do not.

    Group names list the parameter names, so a test or a log can see which tensor went where.
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append((name, parameter))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; raises if nothing is trainable."""
    groups = [group for group in parameter_groups(model, config.weight_decay) if group["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameter: check model.train_* and model.lora")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning-rate factor at ``step``: linear from 1/warmup to 1 over the warmup, then cosine to ``min_lr_ratio``.

    Example:
        >>> [round(warmup_cosine(s, warmup_steps=2, total_steps=6), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.75, 0.25, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int):
    """A ``LambdaLR`` of :func:`warmup_cosine`: the factor of step ``s`` applies to the ``s``-th update."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(
            step, warmup_steps=config.warmup_steps, total_steps=total_steps, min_lr_ratio=config.min_lr_ratio
        ),
    )


__all__ = ["build_optimizer", "build_scheduler", "parameter_groups", "warmup_cosine"]

"""Optimisers and the per-step cosine schedule with linear warm-up."""
from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def optimizer_groups(members: list[tuple[str, list, float]], weight_decay: float) -> list[dict]:
    """(name, parameters, lr) -> optimiser groups of the parameters that train: weight decay on
    weight tensors, none on norms and biases (`<name>_no_decay`)."""
    groups = []
    for name, params, lr in members:
        params = [p for p in params if p.requires_grad]
        with_decay = [p for p in params if p.ndim > 1]
        without_decay = [p for p in params if p.ndim <= 1]
        if with_decay:
            groups.append({"name": name, "params": with_decay, "lr": lr, "weight_decay": weight_decay})
        if without_decay:
            groups.append({"name": f"{name}_no_decay", "params": without_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.resolved_lr, momentum=config.momentum, nesterov=False)
    return torch.optim.AdamW(groups, lr=config.resolved_lr)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor: linear 0 -> 1 over the warm-up steps, then cosine 1 -> 0 at the last step."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

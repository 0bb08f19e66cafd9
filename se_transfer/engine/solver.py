"""Optimizers and learning-rate schedules (per-iteration LambdaLR: warm-up, then multistep, cosine or constant)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def build_optimizer(
    model: torch.nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
    backbone_lr_multiplier: float = 1.0,
    is_head: Callable[[str], bool] | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over the trainable parameters, weight decay on all (the papers' recipes).

    With ``backbone_lr_multiplier`` != 1 the parameters outside the head (``is_head(name)`` false; the task says
    which parameters are its head) form a second group at ``lr * backbone_lr_multiplier``; schedules scale both
    groups alike.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (everything frozen?)")
    if backbone_lr_multiplier == 1.0:
        groups = [{"params": [p for _, p in named], "lr": lr}]
    else:
        if is_head is None:
            raise ValueError("SOLVER.BACKBONE_LR_MULTIPLIER: this task does not say which parameters are its head")
        head = [p for n, p in named if is_head(n)]
        if not head:
            raise ValueError("SOLVER.BACKBONE_LR_MULTIPLIER needs trainable head parameters; found none")
        body = [p for n, p in named if not is_head(n)]
        groups = [{"params": head, "lr": lr}]
        if body:
            groups.append({"params": body, "lr": lr * backbone_lr_multiplier})
    if name == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {name!r}")


def lr_factor(
    iteration: int,
    max_iter: int,
    scheduler: str,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.1,
) -> float:
    """Multiplier of the base LR at ``iteration`` (0-based); steps are in iterations."""
    if scheduler == "multistep":
        factor = gamma ** sum(1 for s in steps if iteration >= s)
    elif scheduler == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max(1, max_iter)))
    elif scheduler == "constant":
        factor = 1.0
    else:
        raise ValueError(f"SOLVER.LR_SCHEDULER must be 'multistep', 'cosine' or 'constant', got {scheduler!r}")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration with ``lr_factor(iteration, **kwargs)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **kwargs))

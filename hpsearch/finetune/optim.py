"""The optimizer and the learning-rate schedule of a trial: AdamW over the trainable parameters (no weight decay on
biases and norms) and transformers' schedules by name."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..config.vocabulary import SCHEDULER_KWARGS, Hyperparameters


def make_optimizer(model: torch.nn.Module, hp: Hyperparameters, device: torch.device,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norms; fused kernel where available.
    ``capturable`` (a CUDA graph replays its steps): the learning rate a device tensor the schedule fills in place,
    the step counts on the device."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if capturable:
        return torch.optim.AdamW(groups, lr=torch.tensor(hp.learning_rate, device=device), fused=True, capturable=True)
    try:  # fused kernels exist for CUDA and (torch >= 2.4) the CPU: 5x faster than foreach on a 22M-param model
        return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=hp.learning_rate, foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, hp: Hyperparameters, total_steps: int) -> Any:
    """transformers' learning-rate schedule by name, with warmup as a ratio of the total steps."""
    from transformers import get_scheduler

    warmup = math.ceil(hp.warmup_ratio * total_steps)
    kwargs = dict(SCHEDULER_KWARGS.get(hp.scheduler, {}))
    if "num_decay_steps_ratio" in kwargs:
        kwargs = {"num_decay_steps": max(1, math.ceil(kwargs.pop("num_decay_steps_ratio") * total_steps))}
    return get_scheduler(hp.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=kwargs or None)

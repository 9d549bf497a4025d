"""The fine-tuning recipe: everything from a validated space to a trained model, written once.

A trial (:mod:`hpsearch.study.objective`), a confirmation on cross-validation folds (:mod:`hpsearch.study.confirm`)
and ``hpsearch train`` (:mod:`hpsearch.outputs.retrain`) all run :func:`prepare` once and :func:`fine_tune` per
model, so they check the same things and train the same way: the task lives in the data and its loss, the
settings in the space, the hyperparameters in ``hp``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config.validation import check_layers, check_lora_targets, uses_lora
from ..tasks.encoded import PreparedData
from .data import prepare as prepare_data
from .device import resolve_device
from .loop import Callback, TrainResult, TrainSettings, train
from .model import build_model, layer_count, linear_module_names, load_tokenizer, preload

if TYPE_CHECKING:
    from ..config.space import Space


@dataclass
class Prepared:
    """What every model of a space starts from: the device it trains on and the tokenized data, resident there."""

    device: torch.device
    """Where models train (``auto`` resolved)."""
    data: PreparedData
    """Both splits encoded for the space's task, on ``device``."""


def prepare(space: Space, device: str | torch.device = "auto", *, weights: bool = True) -> Prepared:
    """Check what only the model can tell (its layer count against ``num_frozen_layers``, its linear layers against
    ``lora_target_modules``), tokenize the data (cached on disk) and, with ``weights``, read the pretrained weights
    into memory once for every model this process builds. A problem is a ConfigError naming the key."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model_cfg = space.config["model"]
    check_layers(space, layer_count(model_cfg))
    data = prepare_data(space.config["data"], load_tokenizer(model_cfg), model_cfg["max_length"])
    if uses_lora(space):
        check_lora_targets(space, linear_module_names(model_cfg, data))
    if weights:
        preload(model_cfg, data)
    return Prepared(dev, data.to(dev))  # on a GPU the whole tokenized set stays resident


def fine_tune(space: Space, hp: dict, data: PreparedData, device: torch.device,
              callback: Callback | None = None) -> tuple[torch.nn.Module, TrainResult]:
    """Build the space's model with the hyperparameters ``hp`` and train it on ``data`` as the space says; return
    the trained model and what training produced (the time to build the model counts as setup)."""
    t0 = time.perf_counter()
    model = build_model(space.config["model"], hp, data, device)
    result = train(model, data, hp, TrainSettings.from_space(space), device=device, callback=callback,
                   setup_time=time.perf_counter() - t0)
    return model, result

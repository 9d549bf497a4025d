"""The fine-tuning recipe: everything from a validated space to a trained model, written once.

A trial (:mod:`hpsearch.study.objective`), a confirmation on cross-validation folds (:mod:`hpsearch.study.confirm`)
and ``hpsearch train`` (:mod:`hpsearch.outputs.retrain`) all run :func:`prepare` once and :func:`fine_tune` per
model, so they check the same things and train the same way: the task lives in the data and its loss, the
settings in the space, the hyperparameters in ``hp``.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..config.validation import check_layers, check_lora_targets, uses_lora
from ..config.vocabulary import Hyperparameters
from ..tasks.encoded import PreparedData
from .data import prepare as prepare_data
from .device import deterministic, resolve_device, set_numerics
from .distributed import Group, rank_device
from .fused import SENTINEL_DROPOUT, Fuser, PassCost
from .loop import train
from .model import (
    build_model,
    checkpoint_dtype,
    layer_count,
    linear_module_names,
    load_tokenizer,
    matmul_parameters,
    preload,
    shared_base,
)
from .precision import Precision, Workload, matmul_flops, precision_plan, typical_pass
from .run import Durability
from .state import Callback, TrainResult, TrainSettings

if TYPE_CHECKING:
    from ..config.space import Space


@dataclass
class Prepared:
    """What every model of a space starts from: the device it trains on, the precision it trains in, and the
    tokenized data, resident on the device."""

    device: torch.device
    """Where models train (``auto`` resolved)."""
    data: PreparedData
    """Both splits encoded for the space's task, on ``device``."""
    precision: Precision
    """``model.precision`` and ``model.dtype`` resolved for this device and checkpoint."""


def prepare(space: Space, device: str | torch.device = "auto", *, weights: bool = True) -> Prepared:
    """Check what only the model can tell (the layer count against ``num_frozen_layers``, the linear layers against
    ``lora_target_modules``, native bf16 on the device), tokenize the data (cached on disk), choose the precision
    (``auto``: by what a step of this space costs on this device, :mod:`hpsearch.finetune.precision`), set the
    device's numerics (TF32, no cuDNN attention, ``study.deterministic``) and, with ``weights``, read the pretrained
    weights into memory once for every model this process builds. A problem is an error naming the key, before any
    trial (what the machine must offer, bitsandbytes or flash-attn, the run's rules checked before:
    :mod:`hpsearch.config.rules`)."""
    dev = rank_device(device if isinstance(device, torch.device) else resolve_device(device))
    model = space.model
    data = tokenize(space)
    precision = precision_plan(model.precision, model.dtype, checkpoint_dtype(model), dev,
                               workload(space, data) if model.precision == "auto" and dev.type == "cuda" else None)
    set_numerics(dev)
    if space.study.deterministic:
        deterministic(dev)
    if weights and not model.quantized:
        preload(model, data)
    return Prepared(dev, data.to(dev), precision)  # on a GPU the whole tokenized set stays resident


def workload(space: Space, data: PreparedData) -> Workload | None:
    """What a training step of the space computes, for ``precision: auto`` to weigh (None for quantized weights,
    whose model is not built to count)."""
    if space.model.quantized:
        return None
    rows = typical_pass(space.params, space.fixed)
    return Workload(matmul_parameters(space.model, data), layer_count(space.model) or 1,
                    rows * float(data.train.lengths.float().mean()))


def tokenize(space: Space) -> PreparedData:
    """The space's data tokenized (cached on disk, so that workers and resumed runs skip it), after the checks only
    the model's config can answer: its layer count against ``num_frozen_layers``, its linear layers against
    ``lora_target_modules``. Touches no device: ``--workers``' parent runs it before its workers start."""
    check_layers(space, layer_count(space.model))
    data = prepare_data(space.data, load_tokenizer(space.model), space.model.max_length)
    if uses_lora(space):
        check_lora_targets(space, linear_module_names(space.model, data))
    return data


@torch.inference_mode()
def inference_latency_ms(model: torch.nn.Module, prepared: Prepared, rows: int = 16, warmup: int = 2) -> float:
    """The model's inference latency: the median milliseconds of a forward pass over one validation row, over
    ``rows`` rows after ``warmup`` (what serving one request costs; ``study.metrics: [..., latency_ms]``)."""
    import statistics

    from .device import autocast

    data, device = prepared.data, prepared.device
    task = data.task
    was_training = model.training
    model.eval()
    times = []
    with autocast(device, prepared.precision.autocast):
        for i in range(min(len(data.validation), rows + warmup)):
            one = torch.tensor([i])
            batch, labels = data.validation.batch(one, device), data.validation.labels_of(one, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            task.forward(model, batch, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    model.train(was_training)
    return 1000.0 * statistics.median(times) if times else float("nan")


def encode_test(space: Space, prepared: Prepared) -> Any:
    """``data.test`` encoded with the prepared data's tokenizer (None without one); a bad row is a DataError."""
    from .data import prepare_test

    if space.data.test is None:
        return None
    return prepare_test(space.data, prepared.data.tokenizer, space.model.max_length)


def score_test(space: Space, model: torch.nn.Module, prepared: Prepared,
               test: Any = None) -> dict[str, float] | None:
    """The model's metrics on ``data.test`` (None without one; ``test``: it already encoded by
    :func:`encode_test`): measured once per final model (``train``, ``export --model``), never used to choose."""
    from .evaluation import evaluate

    test = test if test is not None else encode_test(space, prepared)
    if test is None:
        return None
    settings = TrainSettings.from_space(space, prepared.precision)
    return evaluate(model, test, prepared.data, prepared.device, dtype=prepared.precision.autocast, generate=True,
                    batch_tokens=settings.eval_batch_tokens, user_metrics=settings.user_metrics)


def fine_tune(space: Space, hp: Hyperparameters, prepared: Prepared, callback: Callback | None = None,
              group: Group | None = None, fuser: Fuser | None = None,
              durability: Durability | None = None) -> tuple[torch.nn.Module, TrainResult]:
    """Build the space's model with the hyperparameters ``hp`` and train it on the prepared data as the space says
    (data-parallel across ``group``'s ranks when given; as a member of ``fuser``'s fused group when given, a LoRA
    model on its shared base; saved as it goes and continued from a checkpoint with ``durability``); return the
    trained model and what training produced (the time to build the model counts as setup)."""
    t0 = time.perf_counter()
    with fuser.rng_lock if fuser is not None else nullcontext():  # the head's seed is the process's
        model = build_model(space.model, hp, prepared.data, prepared.device, prepared.precision,
                            base=fuser.base if fuser is not None and hp.lora_r > 0 else None)
    result = train(model, prepared.data, hp, TrainSettings.from_space(space, prepared.precision),
                   device=prepared.device, callback=callback, setup_time=time.perf_counter() - t0, group=group,
                   fuser=fuser, durability=durability)
    return model, result


def fuser_for(space: Space, prepared: Prepared, size: int) -> Fuser:
    """A fused group of up to ``size`` trials of ``space`` (:mod:`hpsearch.finetune.fused`), whose LoRA members
    and executor share one copy of the pretrained body."""
    base = shared_base(space.model, prepared.data, prepared.device, prepared.precision)

    def executor() -> torch.nn.Module:
        hp = Hyperparameters().replace(lora_r=0, dropout=SENTINEL_DROPOUT)
        return build_model(space.model, hp, prepared.data, prepared.device, prepared.precision, base=base,
                           frozen=True)

    return Fuser(size, prepared.data.task, prepared.device, prepared.precision.autocast, executor, base=base,
                 cost=pass_cost(space, prepared))


def pass_cost(space: Space, prepared: Prepared) -> PassCost:
    """What a fused pass of the space's model costs on the prepared device: launches a pass (the same estimate
    ``auto`` precision weighs) and arithmetic a padded token at the device's matrix rate."""
    load = workload(space, prepared.data)
    if load is None:  # quantized weights: unknown, fuse every step into one pass
        return PassCost()
    flops = matmul_flops(prepared.device, prepared.precision.autocast)
    return PassCost(fixed_s=load.launch_s(), token_s=load.token_s(flops))

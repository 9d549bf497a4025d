"""The space file's vocabulary: every hyperparameter with its kind, default and range, the samplers, pruners,
schedulers and file formats hpsearch knows, and the keys each section takes.

Plain data, no torch: validation, the CLI's help and the docs read it. Tasks (and their metrics and columns)
live in :mod:`hpsearch.tasks`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# What may be searched or fixed. Each hyperparameter has a kind, a default and a valid range.

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
"""transformers' get_scheduler names that need nothing but warmup and total steps (a test checks they exist)."""

SCHEDULER_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps_ratio": 0.1},
}
"""Defaults for schedulers whose get_scheduler call needs scheduler_specific_kwargs (ratios resolved in training)."""


@dataclass(frozen=True)
class Hyperparameter:
    """What one hyperparameter takes: its kind (float, int or str), default and admissible range."""

    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not admissible, or None when it is."""
        if self.kind == "str":
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}"
            if not self.choices and (not isinstance(value, str) or not value.strip()):
                return "must be a non-empty string"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
        if self.kind == "int" and not float(value).is_integer():
            return "must be an integer"
        if not math.isfinite(value):
            return "must be finite"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None


def _hp(kind: str, default: Any, **bounds: Any) -> Any:
    """A :class:`Hyperparameters` field: its default and what it takes."""
    return dataclasses.field(default=default, metadata={"spec": Hyperparameter(kind, default, **bounds)})


@dataclass(frozen=True)
class Hyperparameters:
    """One trial's hyperparameters, every one set: searched, fixed, or at its default. What may be searched or fixed
    in a space file is exactly these fields (:data:`HYPERPARAMETERS` gives each one's kind and range).

    >>> Hyperparameters.of({"learning_rate": 1e-4}).batch_size
    32
    """

    learning_rate: float = _hp("float", 5e-5, low=0, low_open=True)
    """AdamW peak learning rate."""
    batch_size: int = _hp("int", 32, low=1)
    """Training examples per optimizer step."""
    epochs: int = _hp("int", 1, low=1, high=1000)
    """Passes over the training set."""
    dropout: float = _hp("float", 0.1, low=0, high=1, high_open=True)
    """The model's hidden and attention dropout."""
    weight_decay: float = _hp("float", 0.0, low=0)
    """AdamW decoupled weight decay (not on biases and norms)."""
    scheduler: str = _hp("str", "linear", choices=SCHEDULERS)
    """transformers' learning-rate schedule."""
    warmup_ratio: float = _hp("float", 0.0, low=0, high=1, high_open=True)
    """The fraction of the steps spent warming up."""
    num_frozen_layers: int = _hp("int", 0, low=0)
    """Embeddings plus the first k encoder layers frozen (0: none)."""
    seed: int = _hp("int", 42, low=0, high=2**32 - 1)
    """Seeds the head's initialization, dropout and the batch order."""
    max_grad_norm: float = _hp("float", 1.0, low=0)
    """Gradient clipping norm (0 turns it off)."""
    micro_batch_size: int = _hp("int", 0, low=0)
    """Examples per forward and backward pass; ``batch_size`` is reached by accumulating gradients (0: the whole
    batch, halved on out of memory)."""
    lora_r: int = _hp("int", 0, low=0, high=4096)
    """LoRA rank (peft); 0 fine-tunes every weight, so one search can compare both."""
    lora_alpha: float = _hp("float", 16.0, low=0, low_open=True)
    """LoRA scaling numerator (alpha / r)."""
    lora_dropout: float = _hp("float", 0.0, low=0, high=1, high_open=True)
    """Dropout on the LoRA branch's input."""
    lora_target_modules: str = _hp("str", "all-linear")
    """Modules that get adapters: all-linear, or module names joined by commas (query,value ...); the task's head
    is always trained in full."""

    @classmethod
    def of(cls, values: Any) -> Hyperparameters:
        """Every hyperparameter: ``values`` (a mapping by name, or Hyperparameters) over the defaults; an unknown
        name is a TypeError naming it."""
        if isinstance(values, Hyperparameters):
            return values
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """By name, in this class's order (what a trial stores and a kept model's metrics.json holds)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Hyperparameters:
        return dataclasses.replace(self, **changes)


HYPERPARAMETERS: dict[str, Hyperparameter] = {f.name: f.metadata["spec"] for f in dataclasses.fields(Hyperparameters)}
"""What may be searched or fixed, by name: each one's kind, default and range."""
ALL_LINEAR = "all-linear"


def lora_targets(value: str) -> str | list[str]:
    """The peft ``target_modules`` for a ``lora_target_modules`` value: all-linear, or the comma-separated names."""
    return ALL_LINEAR if value == ALL_LINEAR else [v.strip() for v in value.split(",") if v.strip()]

# ---------------------------------------------------------------------------------------------------------------
# Study-level vocabulary.

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "grid": "GridSampler",
    "nsga2": "NSGAIISampler",
}
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "qmc", "grid", "nsga2", "gp")
"""The samplers that take several objectives (``study.metrics``); CMA-ES takes one."""
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "patient": "PatientPruner",
    "none": "NopPruner",
}
"""Optuna's pruners by name. ``patient`` wraps another (``wrapped:``) and only lets it prune a trial whose
metric has not improved for ``options.patience`` reports. WilcoxonPruner is left out: it compares trials
example by example (a report per validation instance), not along training."""
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet",
                ".conll": "conll"}
"""Data file formats by extension (``format:`` names one for any other name). ``conll``: a word per line with its
tag in the last column, for token classification."""

TOP_KEYS = ("study", "model", "data", "params", "fixed", "when", "origin")
DEFAULT_REPORTS_PER_EPOCH = 1
"""Evaluations per epoch unless a space asks for more. Quarter-epoch reports on a 256-row subset (the old default)
let the median pruner decide on noise and favour configs that start fast; one whole-validation report per epoch
reached the same accuracy sooner on every sampler seed measured (bench/README.md, "Lever runs")."""
TRIAL_VALUES = ("best", "last")
DEFAULT_TRIAL_VALUE = "best"
"""What a trial reports: its best whole-validation checkpoint (and those weights kept), or its last evaluation.
bench/README.md has the measurement behind the default."""
DISTRIBUTED = ("ddp", "fsdp")
"""``model.distributed``, how the devices of a trial (``--gpus-per-trial K``) hold the model: ``ddp`` (a whole copy
on each, gradients averaged) or ``fsdp`` (parameters, gradients and AdamW state sharded over them, each block
gathered for its forward and backward: for models that do not fit one device)."""
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-true")
"""``model.precision``, how a model trains (:func:`hpsearch.finetune.precision.precision_plan`): ``auto`` (on a GPU
fp32 with TF32 products for a launch-bound step, bf16 mixed, or fp16 without native bf16, for a compute-bound one;
on a CPU bf16 mixed where bf16 is native, else fp32), ``fp32``, ``bf16`` and ``fp16``
(mixed: trained parameters and AdamW state in fp32, compute autocast; fp16 with a loss scaler), ``bf16-true`` (pure:
weights, gradients and AdamW state in bf16; the smallest memory, small updates lost)."""
DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``model.dtype``, the dtype the weights are loaded in and frozen ones stay in: ``auto`` is the checkpoint's
(config.json's ``dtype``), float32 where it names none."""
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
"""``model.attn_implementation``: ``auto`` is flash_attention_2 on a GPU in half precision when the flash-attn
package is installed, else transformers' default (SDPA where the model supports it)."""
QUANTIZATIONS = ("none", "4bit", "8bit")
"""``model.quantization``: frozen base weights in 4-bit NF4 or 8-bit (bitsandbytes, a CUDA GPU): QLoRA; every trial
then needs ``lora_r`` > 0."""
EVAL_BATCH_TOKENS = 16384
"""``model.eval_batch_tokens``: padded tokens per evaluation batch (at most 64 rows, where the CPU is fastest). A
1,024-token decoder evaluates 16 rows at a time, whatever the training batch."""
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
FIXED_KEYS = ("value", "when")
"""A fixed hyperparameter given as a mapping: its value and the condition under which it is active."""
PARAM_TYPES = ("float", "int", "categorical")



def model_layer_count(config: dict) -> int | None:
    """The number of (encoder) layers a transformers config declares, or None if it names none we know."""
    for key in ("num_hidden_layers", "n_layers", "num_layers", "n_layer", "encoder_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


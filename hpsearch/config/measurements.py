"""What a trial measures, one row each: the attribute it is stored as, its unit, what it means, where it comes from,
and whether ``study.constraints`` may bound it or ``study.metrics`` list it as an objective.

Validation takes the names a constraint or an objective may use from here, the objective records every row
(:func:`hpsearch.study.objective.measured`), the report shows them with their units, and the README's constraint
list is checked against them. Adding a measurement is one row here plus, for a ``training`` row, the
:class:`~hpsearch.finetune.loop.TrainingState` attribute it reads.

>>> [m.name for m in MEASUREMENTS if m.objective]
['train_time_s', 'parameters', 'trainable_parameters', 'latency_ms']
>>> CONSTRAINTS["peak_memory_mb"].unit
'MB'
"""
from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("training", "device", "model")
"""Where a measurement comes from: the training loop's state, the device (peak memory), or the trained model
(measured once after training, and only when an objective asks for it)."""


@dataclass(frozen=True)
class Measurement:
    """One measured trial attribute."""

    name: str
    """The trial's user attribute, and the name constraints and objectives use."""
    unit: str
    """How its value is counted: s, MB, ms, examples/s, tokens/s, or count."""
    help: str
    """What it measures, in a sentence a user reads in ``validate``'s errors and the report."""
    source: str
    """training, device or model (:data:`SOURCES`)."""
    field: str | None = None
    """For a ``training`` measurement: the TrainingState attribute it reads."""
    digits: int | None = None
    """Decimal places it is stored with (None: as measured, an integer count)."""
    constraint: bool = False
    """Whether ``study.constraints`` may bound it."""
    objective: bool = False
    """Whether ``study.metrics`` may list it (minimized)."""
    own_alone: bool = False
    """Whether it is a trial's own only when the trial trains alone (times, throughput, memory: a fused member's
    are its group's), so that ``--fuse`` refuses it in ``study.metrics`` and ``study.constraints``."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if (self.source == "training") != (self.field is not None):
            raise ValueError(f"{self.name}: a training measurement names its TrainingState field, no other does")

    def stored(self, value: float | int) -> float | int:
        """``value`` as the trial stores it."""
        return value if self.digits is None else round(float(value), self.digits)


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("steps", "count", "optimizer steps taken", "training", "step"),
    Measurement("epochs_completed", "count", "epochs of training data seen (fractional)", "training",
                "epochs_completed", digits=4),
    Measurement("micro_batch_size", "count", "rows per forward and backward pass (the batch when nothing is "
                "accumulated)", "training", "micro_batch_size"),
    Measurement("train_time_s", "s", "seconds of training (a trial past a bound on it is stopped there and counts "
                "as a violation)", "training", "train_time", digits=3, constraint=True, objective=True,
                own_alone=True),
    Measurement("eval_time_s", "s", "seconds of evaluation", "training", "eval_time", digits=3, constraint=True,
                own_alone=True),
    Measurement("setup_time_s", "s", "seconds from the trial's start to its first training step (building the "
                "model, the optimizer)", "training", "setup_time", digits=3, own_alone=True),
    Measurement("examples_per_s", "examples/s", "training throughput in rows per second", "training",
                "examples_per_s", digits=2, constraint=True, own_alone=True),
    Measurement("tokens_per_s", "tokens/s", "training throughput in real (unpadded) tokens per second", "training",
                "tokens_per_s", digits=1, constraint=True, own_alone=True),
    Measurement("padding_ratio", "count", "padded tokens the training passes computed per real token (1.0: no "
                "padding)", "training", "padding_ratio", digits=4, constraint=True),
    Measurement("parameters", "count", "the model's parameters", "training", "parameters", constraint=True,
                objective=True),
    Measurement("trainable_parameters", "count", "the parameters training updates (LoRA's adapters and the head; "
                "frozen layers left out)", "training", "trainable_parameters", constraint=True, objective=True),
    Measurement("peak_memory_mb", "MB", "the trial's peak memory: allocated GPU memory, or the process's peak RSS "
                "on a CPU (which never goes down within a process: use it on GPUs); a fused member's is its group's",
                "device", digits=1, constraint=True, own_alone=True),
    Measurement("latency_ms", "ms", "milliseconds per example of the trained model's inference, one row at a time "
                "(16 validation rows after 2 to warm up)", "model", digits=4, objective=True,
                own_alone=True),
)
"""Every measurement a trial records, in the order the report shows them."""

BY_NAME = {m.name: m for m in MEASUREMENTS}
CONSTRAINTS = {m.name: m for m in MEASUREMENTS if m.constraint}
"""What ``study.constraints`` can bound (``ATTRIBUTE <= NUMBER``; ``<``, ``>=``, ``>`` too). A trial whose
measurement breaks a bound is infeasible: Optuna's samplers learn to avoid its region and it is never the study's
best."""
OBJECTIVES = {m.name: m for m in MEASUREMENTS if m.objective}
"""What ``study.metrics`` can list besides the task's metrics and metric functions, each minimized."""

TRAIN_TIME = BY_NAME["train_time_s"]
EPOCHS_COMPLETED = BY_NAME["epochs_completed"]
PEAK_MEMORY = BY_NAME["peak_memory_mb"]
LATENCY = BY_NAME["latency_ms"]

"""Everything one call of :func:`hpsearch.finetune.loop.train` works with: the model, its data and hyperparameters,
the optimizer and schedule, where training stands (the position a checkpoint records), how it is saved
(:class:`Durability`), and the levers set up for it (set up once by the loop's ``_start``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config.vocabulary import Hyperparameters
from ..tasks import Task
from ..tasks.encoded import Encoded, PreparedData
from .checkpoints import Tracker
from .distributed import Group
from .fused import Member
from .graphs import StepGraphs
from .state import Callback, TrainingState, TrainSettings
from .vocab import SmallVocabulary

FORKABLE = ("learning_rate", "weight_decay", "dropout")
"""What a fork (a new trial continuing another's checkpoint) may change: the ground of population-based training."""
CHECKPOINT_EVERY_S = 300.0
"""Seconds of training between two checkpoints of a trial at most (besides one at every report)."""


@dataclass
class Position:
    """Where in its epochs a run stands: what a resumed run skips to."""

    epoch: int = 0
    """The epoch being trained."""
    batches: int = 0
    """Its batches trained so far."""
    seen: int = 0
    """Its rows trained so far."""
    next_report: int = 1
    """Its first report not yet taken (1 .. reports_per_epoch)."""
    order: torch.Tensor | None = None
    """The batch-order generator's state when the epoch drew its batches (None: the epoch has not started)."""


@dataclass
class Durability:
    """What makes a run durable, given by the caller of :func:`hpsearch.finetune.loop.train`."""

    save: Callable[[Callable[[Path], None], dict[str, Any]], None]
    """Stores a checkpoint: called with a function that writes it to a path, and a summary of where the run stands
    (``step``, ``report``, ``epochs``, ``of_steps``). It must not raise for a store that failed (it records why and
    keeps the checkpoint before)."""
    every_s: float = CHECKPOINT_EVERY_S
    """Seconds of training between two checkpoints at most."""
    resume: Path | None = None
    """A checkpoint file to continue from (None: from the start)."""
    resumed: dict[str, Any] = field(default_factory=dict)
    """Filled by the loop when it continued from :attr:`resume`: the summary the checkpoint was saved with."""
    fork: bool = False
    """Whether :attr:`resume` is another trial's checkpoint, continued with some of :data:`FORKABLE` changed."""


@dataclass
class Run:
    """Everything one call of :func:`train` works with, set up once by :func:`_start`."""

    model: torch.nn.Module
    data: PreparedData
    hp: Hyperparameters
    device: torch.device
    task: Task
    settings: TrainSettings
    state: TrainingState
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[torch.nn.Parameter]
    generator: torch.Generator
    subset: Encoded
    """The validation rows of intermediate evaluations (all of them, or the first ``intermediate_eval_samples``)."""
    tracker: Tracker | None
    generate_always: bool
    """Generation (ROUGE) costs far more than a forward pass: on the final evaluation only, unless the metric that
    selects is a generated one (then the pruner and the checkpoints need it on every evaluation)."""
    every_epoch: bool
    """Whether epoch ends are whole-validation checkpoints (something to compare or keep)."""
    vocab: SmallVocabulary | None
    callback: Callback
    scaler: Any = None
    """fp16's loss scaler (``torch.amp.GradScaler``), None otherwise."""
    micro: int = 0
    """Rows per forward and backward pass: the batch, or ``micro_batch_size`` (halved on out of memory when the
    batch size chose it)."""
    shrink_on_oom: bool = False
    """Whether an out-of-memory step is retried with half the micro-batch (``micro_batch_size`` 0: not set)."""
    loss_total: torch.Tensor | None = None
    """On a GPU, the sum of every step's training loss, kept on the device: a non-finite loss makes it non-finite
    for good, and it is read at each report, so that no step waits for the device to check (one kernel a step, where
    remembering the first bad step took eight). None on the CPU, where each loss is checked at once."""
    checked_step: int = 0
    """The step of the last report that found ``loss_total`` finite."""
    widths: tuple[int, ...] = ()
    """The padded widths the trial's training batches take on a GPU (:func:`bucket_widths`); empty: each batch's
    longest row (the CPU, where padding costs arithmetic)."""
    graphs: StepGraphs | None = None
    """The step replayed from CUDA graphs (``model.cuda_graphs``); None: the eager step."""
    mask_hook: Any = None
    """The forward pre-hook that gives the model its attention mask in the 4-D additive form (:mod:`.attention`),
    removed when training ends; None where the model takes a 2-D mask."""
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    group: Group | None = None
    """The trial's process group when it trains across devices (None: this process alone)."""
    trainer: torch.nn.Module | None = None
    """What the training passes run: the model, or the model in DistributedDataParallel within a group."""
    member: Member | None = None
    """This model's place in a fused group (its passes run with the other members'); None: trained alone."""
    pos: Position = field(default_factory=Position)
    """Where in its epochs the run stands (what a checkpoint records and a resumed run skips to)."""
    durable: Durability | None = None
    """How the run is saved and resumed (:mod:`hpsearch.finetune.durable`); None: it is not."""
    saved_at: float = field(default_factory=time.perf_counter)
    """When the run's state was last saved (or the run set up), for :attr:`Durability.every_s`."""
    t0: float = 0.0
    """When the training time being counted started (the epoch's start, or the last report's end)."""

    @property
    def autocast(self) -> torch.dtype | None:
        return self.settings.precision.autocast

    @property
    def bad_step(self) -> torch.Tensor | None:
        """``loss_total`` by the name the step counter (../shared/bench/ops_per_step.py) sets to take the GPU path of
        the non-finite check on the CPU."""
        return self.loss_total

    @bad_step.setter
    def bad_step(self, value: torch.Tensor | None) -> None:
        self.loss_total = value

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over the group (FSDP): then every rank evaluates, each forward gathering
        the shards (rank 0 alone tells the callback)."""
        return self.group is not None and self.settings.distributed == "fsdp"

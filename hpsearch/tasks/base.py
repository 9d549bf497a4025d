"""The task protocol: everything that differs between fine-tuning tasks, and nothing else.

A task says which columns its data needs and which options it takes (known to validation, which imports no
torch), how raw rows become encoded tensors, which transformers Auto class and head config it builds, its loss,
and its evaluation. The training loop, objective, runner, storage, export and report know no task: they call
these methods. Adding a task is one new module in this package plus its line in ``hpsearch.tasks.TASKS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, RawSplit, Rows

IGNORE = -100
"""The label of a position no loss learns (padding, a prompt): PyTorch's ``ignore_index``, as transformers uses it."""


@dataclass(frozen=True)
class Metric:
    """A validation metric a task computes: its name and whether larger is better."""

    name: str
    maximize: bool
    help: str = ""
    generated: bool = False
    """Computed from generated text (ROUGE): only on evaluations that generate (see :class:`Task`)."""
    proportion: bool = False
    """A share of the validation rows (accuracy): its standard error is sqrt(p (1 - p) / n), which the report
    shows so that leaders within noise of each other are told apart from real differences."""
    undefined: str = ""
    """When it is NaN, why (ROC AUC on a validation split of one class): what a trial that chose by it says."""

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


@dataclass(frozen=True)
class Column:
    """A data column a task reads: the key that names it in a space file, its default name, whether required."""

    key: str
    default: str | None
    required: bool = True
    help: str = ""


def generates(task: Task, metric: str | None = None) -> bool:
    """Whether ``task`` has metrics computed from generated text (``metric``: whether that one is)."""
    return any(m.generated and metric in (None, m.name) for m in task.metrics)


class Task(Protocol):
    """What a fine-tuning task provides. Implementations are stateless singletons.

    Contract:
    - ``name``, ``metrics``, ``default_metric``, ``columns`` and ``options`` are plain data; reading them (and
      importing the module) imports no torch, so that validating a space file stays light.
      ``column_problems`` says what is wrong with a combination of resolved column names (torch-free too).
    - ``encode`` turns both raw splits into :class:`~hpsearch.tasks.encoded.Encoded` tensors (labels as the loss takes
      them) and returns the label names a head needs (empty for a task without named labels).
    - ``head_config`` returns the transformers config overrides for a model of class ``auto_class`` with
      those labels; the model body and its construction are shared by every task (``hpsearch.finetune.model``).
      ``peft_task_type`` names the task for peft's LoRA (which then trains the new head in full).
    - ``forward(model, batch, labels)`` runs the model on a batch and returns its logits (an encoder-decoder
      also needs the labels, shifted right, as decoder input). ``host_reads`` says what, in training, it and
      ``loss`` read from the device (a value or a data-dependent shape: what no CUDA graph captures), empty when
      nothing; ``model.cuda_graphs`` is refused for a task that reads.
    - ``loss(logits, labels)`` is the training loss, a mean; a task whose mean is over tokens rather than rows also
      has ``loss_units(labels)``, the count it averages over, so that gradients accumulated over micro-batches
      equal one pass over the batch. ``evaluate_batch(logits, labels, rows)`` reduces one evaluation batch to what
      ``metrics_from`` needs, so evaluation never holds a whole split's logits when it need not; ``rows``
      (:class:`~hpsearch.tasks.encoded.Rows`) gives the batch's row indices, the per-row ``extras`` and raw
      ``examples`` the task stored when it encoded (a question-answering window's offsets and context), and the
      task's options.
    - ``metrics_from`` returns every metric in ``metrics`` that is not ``generated`` (names as keys), and
      ``eval_loss``.
    - A task whose predictions a user's metric function can score (``study.metric: package.module:function``)
      has ``predictions(batches, label_names, options)``: a dict with ``predictions`` and ``references`` and the
      optional arguments its ``prediction_extras`` names (``scores``, ``label_names`` where it has them);
      :mod:`hpsearch.config.metrics` says what a function gets.
    - A task with ``generated`` metrics also has ``generate_batch(model, batch, labels, data)``, which generates
      for one batch (the data carries the tokenizer and the task's options), and ``generated_metrics(parts,
      data)``, which scores those parts. The loop generates on the final evaluation, and on every evaluation when
      the study's metric is a generated one.
    """

    name: str
    metrics: tuple[Metric, ...]
    default_metric: str
    columns: tuple[Column, ...]
    options: dict[str, Any]
    auto_class: str
    peft_task_type: str
    host_reads: str

    def column_problems(self, columns: dict[str, str | None]) -> list[tuple[str, str]]: ...

    def encode(self, train: RawSplit, validation: RawSplit, tokenizer: Any, max_length: int,
               options: dict[str, Any]) -> tuple[Encoded, Encoded, list[str]]: ...

    def head_config(self, label_names: list[str]) -> dict[str, Any]: ...

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor: ...

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def evaluate_batch(self, logits: torch.Tensor, labels: torch.Tensor, rows: Rows) -> Any: ...

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]: ...

"""The sections of a validated space as typed, frozen objects: each key a section takes, its default and what it
means, written once here.

Validation (:mod:`hpsearch.config.validation`) checks a raw file against these classes and fills in their defaults;
:class:`~hpsearch.config.space.Space` builds them once from the normalized config, which stays the stored and
exported form; consumers read attributes. A section that a study stored before a key existed gets that key's
default, so old studies load, export and resume.

>>> ModelSection.from_dict({"name_or_path": "bert-base-uncased"}).quantization
'none'
>>> keys(ModelSection)[:3]
('name_or_path', 'max_length', 'trust_remote_code')
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MISSING
from .vocabulary import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_REPORTS_PER_EPOCH,
    DEFAULT_TRIAL_VALUE,
    DISTRIBUTED,
    DTYPES,
    EVAL_BATCH_TOKENS,
    PRECISIONS,
    QUANTIZATIONS,
)

if TYPE_CHECKING:
    from ..tasks.base import Task


def key(default: Any = MISSING, *, kind: type = str, choices: tuple = (), low: int | None = None,
        flat: bool = False) -> Any:
    """A section field: its default (MISSING: required), and for a plain key the ``kind`` of value it takes, its
    ``choices`` or its lower bound ``low``; ``flat`` fields are not keys of their own in the file."""
    meta = {"kind": kind, "choices": choices, "low": low, "flat": flat}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def keys(cls: type) -> tuple[str, ...]:
    """The keys a section takes in a space file, in the order the reference lists them."""
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("flat"))


def default(cls: type, name: str) -> Any:
    """The default of section ``cls``'s key ``name`` (MISSING: the key is required)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def spec(cls: type, name: str) -> dict[str, Any]:
    """What section ``cls``'s key ``name`` takes: ``kind``, ``choices`` and ``low``."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


def _known(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``cls`` (a stored section may hold keys since retired)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


# ---------------------------------------------------------------------------------------------------------------
# model:


@dataclass(frozen=True)
class ModelSection:
    """``model:``: which pretrained model a trial starts from, and how it is loaded, computed and held."""

    name_or_path: str = key()
    """A local directory with a transformers ``config.json``, or a hub id (``org/name``)."""
    max_length: int = key(128, kind=int, low=2)
    """Tokens per example after truncation."""
    trust_remote_code: bool = key(False, kind=bool)
    """Run a hub model's own modelling code: off unless asked."""
    revision: str | None = key(None)
    """A hub branch, tag or commit (None: the default branch)."""
    precision: str = key("auto", choices=PRECISIONS)
    """How a model trains (:data:`hpsearch.config.vocabulary.PRECISIONS`)."""
    dtype: str = key("auto", choices=DTYPES)
    """The dtype weights load in and frozen ones stay in (:data:`hpsearch.config.vocabulary.DTYPES`)."""
    attn_implementation: str = key("auto", choices=ATTN_IMPLEMENTATIONS)
    """The attention kernel transformers is asked for (:data:`~hpsearch.config.vocabulary.ATTN_IMPLEMENTATIONS`)."""
    gradient_checkpointing: bool = key(False, kind=bool)
    """Recompute activations in the backward pass (about a third more compute for much less memory)."""
    quantization: str = key("none", choices=QUANTIZATIONS)
    """Frozen base weights in 4 or 8 bits through bitsandbytes (QLoRA; every trial then trains LoRA adapters)."""
    eval_batch_tokens: int = key(EVAL_BATCH_TOKENS, kind=int, low=1)
    """Padded tokens per evaluation batch (:data:`~hpsearch.config.vocabulary.EVAL_BATCH_TOKENS`)."""
    distributed: str = key("ddp", choices=DISTRIBUTED)
    """How the processes of a ``--gpus-per-trial`` trial hold the model: ``ddp`` copies, ``fsdp`` shards."""
    cuda_graphs: bool = key(False, kind=bool)
    """Replay each batch shape's training step as a CUDA graph (:mod:`hpsearch.finetune.graphs`): a few launches
    a step instead of hundreds, for launch-bound models on a GPU; on the CPU the same step runs uncaptured."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSection:
        return cls(**_known(cls, values))

    @property
    def quantized(self) -> bool:
        """Whether the base weights are quantized (then loaded through bitsandbytes, never trained)."""
        return self.quantization != "none"


# ---------------------------------------------------------------------------------------------------------------
# data:


@dataclass(frozen=True)
class Source:
    """One split's data: a local file (``path``, ``format``) or a hub dataset (``hub``, ``config``, ``split``,
    ``revision``), with the task's columns as this source names them."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = ("path", "format")
    """The keys of a file source (besides the task's columns)."""
    HUB_KEYS: ClassVar[tuple[str, ...]] = ("hub", "config", "split", "revision")
    """The keys of a hub source (besides the task's columns)."""

    path: str | None = None
    """A local file (``~`` expanded)."""
    format: str | None = None
    """csv, tsv, json, jsonl, parquet or conll (by extension unless given)."""
    hub: str | None = None
    """A hub dataset id, for ``datasets.load_dataset``."""
    config: str | None = None
    """The hub dataset's configuration (``sst2`` of ``glue``)."""
    split: str | None = None
    """The hub dataset's split."""
    revision: str | None = None
    """The hub dataset's revision."""
    columns: Mapping[str, str | None] = field(default_factory=dict)
    """The task's column keys (``text_column`` ...) resolved for this source: its own names, else the data
    section's, else the task's defaults."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], columns: Mapping[str, str | None]) -> Source:
        """A source from its normalized form; a column it does not name is the data section's (``columns``)."""
        own = {k: v for k, v in values.items() if k not in columns}
        return cls(**_known(cls, own), columns={k: values.get(k, v) for k, v in columns.items()})

    @property
    def where(self) -> str:
        """How an error names the source: its path, or the hub dataset."""
        return self.path if self.hub is None else f"{self.hub} ({self.config}, {self.split})"

    def identity(self) -> dict[str, Any]:
        """The source as a dict of what names it (the columns left out)."""
        if self.hub is not None:
            return {"hub": self.hub, "config": self.config, "split": self.split, "revision": self.revision}
        return {"path": self.path, "format": self.format}


@dataclass(frozen=True)
class DataSection:
    """``data:``: the task, where its rows come from, and the task's column names and options."""

    task: Task = key()
    """The task object (:mod:`hpsearch.tasks`), resolved once from ``data.task``'s name."""
    train: Source = key()
    """The training rows."""
    validation: Source = key()
    """The rows every trial is scored on (and chosen by)."""
    test: Source | None = key(None)
    """Rows scored once per final model (``train``, ``export --model``), never used to choose."""
    max_train_samples: int | None = key(None, kind=int, low=1)
    """The first N training rows (None: all)."""
    max_eval_samples: int | None = key(None, kind=int, low=1)
    """The first N validation rows (None: all)."""
    columns: Mapping[str, str | None] = key({}, flat=True)
    """The task's column keys as the section names them for both sources (a source may override each)."""
    options: Mapping[str, Any] = key({}, flat=True)
    """The task's options (``label_all_tokens``, ``num_beams`` ...), each given or at the task's default."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataSection:
        from ..tasks import get_task

        task = get_task(values.get("task", "classification"))  # the one lookup of the task by its name
        columns = {c.key: values.get(c.key, c.default) for c in task.columns}
        sources = {s: Source.from_dict(values[s], columns) if values.get(s) else None
                   for s in ("train", "validation", "test")}
        return cls(task=task, **sources, max_train_samples=values.get("max_train_samples"),
                   max_eval_samples=values.get("max_eval_samples"), columns=columns,
                   options={k: values.get(k, v) for k, v in task.options.items()})


# ---------------------------------------------------------------------------------------------------------------
# study:


@dataclass(frozen=True)
class Sampler:
    """``study.sampler``: one of Optuna's samplers by name, its constructor options and its seed."""

    name: str = key("tpe")
    """tpe, random, cmaes, gp, qmc, grid or nsga2 (:data:`hpsearch.config.vocabulary.SAMPLERS`)."""
    seed: int | None = key(None, kind=int, low=0)
    """Each process derives its own seed from it (:mod:`hpsearch.study.seeding`); None: unseeded."""
    options: Mapping[str, Any] = key({})
    """Keyword arguments of the Optuna class, checked by name."""


@dataclass(frozen=True)
class Pruner:
    """``study.pruner``: one of Optuna's pruners by name and its options (``patient`` wraps another)."""

    name: str = key("median")
    """median, percentile, hyperband, successive_halving, patient or none."""
    options: Mapping[str, Any] = key({})
    """Keyword arguments of the Optuna class, checked by name."""
    wrapped: Pruner | None = key(None)
    """The pruner a ``patient`` pruner lets prune (None: none)."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Pruner:
        wrapped = values.get("wrapped")
        return cls(name=values["name"], options=dict(values.get("options") or {}),
                   wrapped=cls.from_dict(wrapped) if wrapped else None)


@dataclass(frozen=True)
class EarlyStopping:
    """``study.early_stopping``: stop a trial after ``patience`` checkpoints without a gain above ``min_delta``."""

    patience: int = key(kind=int, low=1)
    """Whole-validation checkpoints in a row without an improvement."""
    min_delta: float = key(0.0, kind=float)
    """What counts as an improvement."""


@dataclass(frozen=True)
class Confirm:
    """``study.confirm``: retrain the best ``top_k`` trials on ``folds`` cross-validation folds before one is chosen
    (:mod:`hpsearch.study.confirm`)."""

    top_k: int = key(3, kind=int, low=1)
    """How many of the best trials are confirmed."""
    folds: int = key(2, kind=int, low=1)
    """Folds each is retrained on."""


@dataclass(frozen=True)
class StudySection:
    """``study:``: what the study optimizes, how it samples and prunes, and what a trial reports."""

    name: str = key()
    """The study's name in the storage (default: the space file's stem)."""
    direction: str = key(None)
    """maximize or minimize: follows the metric (the first objective's with several)."""
    metric: str = key(None)
    """The metric a trial reports, prunes on and keeps checkpoints by: a task metric or package.module:function."""
    sampler: Sampler = key(Sampler())
    """The Optuna sampler."""
    pruner: Pruner = key(Pruner())
    """The Optuna pruner (none with several objectives)."""
    enqueue: tuple[Mapping[str, Any], ...] = key(())
    """Searched-parameter configs tried first."""
    reports_per_epoch: int = key(DEFAULT_REPORTS_PER_EPOCH, kind=int, low=1)
    """Evaluations per epoch: the pruner's steps."""
    intermediate_eval_samples: int = key(256, kind=int, low=1)
    """Intermediate evaluations score the first N validation rows; the final one all."""
    early_stopping: EarlyStopping | None = key(None)
    """Stop a trial whose checkpoints stop improving (None: off)."""
    trial_value: str = key(DEFAULT_TRIAL_VALUE)
    """best (the best whole-validation checkpoint, its weights kept) or last."""
    confirm: Confirm | None = key(None)
    """Confirm the best trials on cross-validation folds (None: off). Off unless a space asks: on the search
    benchmark it changed the choice on one of two seeds, by nothing the held-out rows could tell, for 12-24 % more
    study time (bench/README.md)."""
    deterministic: bool = key(False, kind=bool)
    """GPU trials replay exactly from their seed (deterministic kernels, slower)."""
    constraints: tuple[str, ...] = key(())
    """Bounds on what a trial measures (``peak_memory_mb <= 20000``); infeasible trials are never best."""
    metrics: tuple[str, ...] = key(())
    """Several objectives (empty: one, ``metric``)."""
    directions: tuple[str, ...] = key(())
    """Each objective's direction, in ``metrics``' order."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StudySection:
        sampler = values.get("sampler") or {}
        stop, confirm = values.get("early_stopping"), values.get("confirm")
        return cls(name=values["name"], direction=values["direction"], metric=values["metric"],
                   sampler=Sampler(**_known(Sampler, sampler)),
                   pruner=Pruner.from_dict(values.get("pruner") or {"name": "median"}),
                   enqueue=tuple(values.get("enqueue") or ()),
                   reports_per_epoch=values.get("reports_per_epoch", DEFAULT_REPORTS_PER_EPOCH),
                   intermediate_eval_samples=values.get("intermediate_eval_samples", 256),
                   early_stopping=EarlyStopping(**_known(EarlyStopping, stop)) if stop else None,
                   trial_value=values.get("trial_value", DEFAULT_TRIAL_VALUE),
                   confirm=Confirm(**_known(Confirm, confirm)) if confirm else None,
                   deterministic=bool(values.get("deterministic", False)),
                   constraints=tuple(values.get("constraints") or ()), metrics=tuple(values.get("metrics") or ()),
                   directions=tuple(values.get("directions") or ()))

    @property
    def multi(self) -> bool:
        """Whether the study has several objectives (``metrics``)."""
        return bool(self.metrics)

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives by name: ``metrics``, or the one ``metric``."""
        return self.metrics or (self.metric,)

    @property
    def all_directions(self) -> tuple[str, ...]:
        """Each objective's direction: ``directions``, or the one ``direction``."""
        return self.directions or (self.direction,)

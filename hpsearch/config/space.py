"""The validated search space: the normalized config (plain dicts, every default filled in), its sections as typed
objects (:mod:`hpsearch.config.sections`), and what a trial needs from it.

The normalized config is what the study stores and what ``export`` writes back, so the same schema serves both.
Reading a file is :mod:`hpsearch.config.files`, checking it :mod:`hpsearch.config.validation`, both together
:func:`hpsearch.config.load.load_space`; its vocabulary is :mod:`hpsearch.config.vocabulary`.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .conditions import Clause, holds, inactive, order, parse
from .sections import DataSection, ModelSection, StudySection
from .vocabulary import HYPERPARAMETERS, Hyperparameters

if TYPE_CHECKING:
    from ..tasks.base import Task


@dataclass(frozen=True)
class Space:
    """A validated search space: the normalized ``config`` and, built from it once, its typed sections."""

    config: dict
    """The normalized config, in file form: what the study stores and export writes."""
    source: str = "<config>"
    """Where it came from (a file, ``<mapping>``), for error messages."""
    study: StudySection = field(init=False, repr=False, compare=False)
    """``study:``, typed."""
    model: ModelSection = field(init=False, repr=False, compare=False)
    """``model:``, typed."""
    data: DataSection = field(init=False, repr=False, compare=False)
    """``data:``, typed (its task resolved to the task object)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "study", StudySection.from_dict(self.config["study"]))
        object.__setattr__(self, "model", ModelSection.from_dict(self.config["model"]))
        object.__setattr__(self, "data", DataSection.from_dict(self.config["data"]))

    @property
    def params(self) -> dict:
        """The searched hyperparameters: each one's ``{type, low, high, log, step}`` or ``{type, choices}``."""
        return self.config["params"]

    @property
    def fixed(self) -> dict:
        """The value of every hyperparameter not searched (given, or its default)."""
        return self.config["fixed"]

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def task(self) -> Task:
        """The task object (``data.task``)."""
        return self.data.task

    @property
    def when(self) -> dict[str, str]:
        """Each conditional hyperparameter's condition as written (``when:``; empty: none is conditional)."""
        return self.config.get("when") or {}

    @property
    def conditions(self) -> dict[str, list[Clause]]:
        """Each conditional hyperparameter's clauses (:mod:`hpsearch.config.conditions`)."""
        return {name: parse(text) for name, text in self.when.items()}

    def inactive(self, values: dict | Hyperparameters) -> set[str]:
        """The hyperparameters whose condition does not hold for ``values`` (every hyperparameter's value)."""
        if isinstance(values, Hyperparameters):
            values = values.as_dict()
        return inactive(self.conditions, values) if self.when else set()

    def suggest(self, trial: Any) -> Hyperparameters:
        """Ask an Optuna trial for every searched parameter whose condition holds, in dependency order; return all
        hyperparameters (searched and fixed; an inactive one at its default, see :meth:`inactive`)."""
        hp = dict(self.fixed)
        conds = self.conditions
        active = {k: v for k, v in hp.items() if k not in conds}
        for name in order(conds, list(self.params) + [n for n in conds if n not in self.params]):
            if name in conds and not holds(conds[name], active):
                hp[name] = HYPERPARAMETERS[name].default
                continue
            spec = self.params.get(name)
            if spec is None:  # a fixed hyperparameter whose condition holds
                active[name] = hp[name]
                continue
            if spec["type"] == "categorical":
                hp[name] = trial.suggest_categorical(name, spec["choices"])
            elif spec["type"] == "int":
                hp[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec["log"])
            else:
                hp[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec["log"])
            active[name] = hp[name]
        return Hyperparameters.of(hp)

    def hyperparameters(self) -> Hyperparameters:
        """The hyperparameters of a space with nothing left to search (``train``, a confirmation fold)."""
        return Hyperparameters.of(self.fixed)

    def with_params(self, values: dict, origin: dict | None = None) -> Space:
        """A space with nothing left to search: ``values`` fixed on top of this one's fixed hyperparameters."""
        cfg = copy.deepcopy(self.config)
        # Defaults first: an inactive parameter was not sampled, and a study stored before a hyperparameter
        # existed has no value for it.
        merged = {**{n: hp.default for n, hp in HYPERPARAMETERS.items()}, **self.fixed, **values}
        off = self.inactive(merged)
        cfg["fixed"] = {name: merged[name] for name in HYPERPARAMETERS if name not in off}
        cfg.pop("when", None)
        cfg["params"] = {}
        cfg["study"]["enqueue"] = []
        if origin is not None:
            cfg["origin"] = origin
        return Space(cfg, self.source)

    def fingerprint(self) -> str:
        """A short stable hash of the config, to tell whether a resumed study runs what it ran before."""
        body = {k: v for k, v in self.config.items() if k != "origin"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        """The config in file form (what export writes and the study stores)."""
        return copy.deepcopy(self.config)

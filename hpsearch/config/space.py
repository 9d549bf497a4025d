"""The validated search space: the normalized config (plain dicts, every default filled in) and what a trial
needs from it.

The normalized config is what the study stores and what ``export`` writes back, so the same schema serves both.
Reading a file is :mod:`hpsearch.config.files`, checking it :mod:`hpsearch.config.validation`, both together
:func:`hpsearch.config.load.load_space`; its vocabulary is :mod:`hpsearch.config.vocabulary`.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .conditions import Clause, holds, inactive, order, parse
from .vocabulary import HYPERPARAMETERS


@dataclass(frozen=True)
class Space:
    """A validated search space: the normalized config plus what a trial needs from it."""

    config: dict
    source: str = "<config>"

    @property
    def study(self) -> dict:
        return self.config["study"]

    @property
    def params(self) -> dict:
        return self.config["params"]

    @property
    def fixed(self) -> dict:
        return self.config["fixed"]

    @property
    def name(self) -> str:
        return self.study["name"]

    @property
    def conditions(self) -> dict[str, list[Clause]]:
        """Each conditional hyperparameter's clauses (``when:``; :mod:`hpsearch.config.conditions`)."""
        return {name: parse(text) for name, text in self.config.get("when", {}).items()}

    def inactive(self, values: dict) -> set[str]:
        """The hyperparameters whose condition does not hold for ``values`` (every hyperparameter's value)."""
        return inactive(self.conditions, values) if self.config.get("when") else set()

    def suggest(self, trial: Any) -> dict:
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
        return {name: hp[name] for name in HYPERPARAMETERS}

    def with_params(self, values: dict, origin: dict | None = None) -> "Space":
        """A space with nothing left to search: ``values`` fixed on top of this one's fixed hyperparameters."""
        cfg = copy.deepcopy(self.config)
        merged = {**self.fixed, **values}
        merged.update({n: HYPERPARAMETERS[n].default for n in self.params if n not in merged})  # inactive: unsampled
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

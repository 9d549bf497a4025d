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

    def suggest(self, trial: Any) -> dict:
        """Ask an Optuna trial for every searched parameter; return all hyperparameters (searched and fixed)."""
        hp = dict(self.fixed)
        for name, spec in self.params.items():
            if spec["type"] == "categorical":
                hp[name] = trial.suggest_categorical(name, spec["choices"])
            elif spec["type"] == "int":
                hp[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec["log"])
            else:
                hp[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec["log"])
        return {name: hp[name] for name in HYPERPARAMETERS}

    def with_params(self, values: dict, origin: dict | None = None) -> "Space":
        """A space with nothing left to search: ``values`` fixed on top of this one's fixed hyperparameters."""
        cfg = copy.deepcopy(self.config)
        cfg["fixed"] = {name: {**self.fixed, **values}[name] for name in HYPERPARAMETERS}
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

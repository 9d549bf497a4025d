"""The sampler and pruner a space names, built from Optuna's classes with the space's options and seed."""
from __future__ import annotations

import warnings

import numpy as np
import optuna

from ..config.sections import Pruner
from ..config.space import Space
from ..config.vocabulary import PRUNERS, SAMPLERS
from .seeding import WorkerSeededSampler


def grid_search_space(params: dict) -> dict[str, list]:
    """The explicit value lists GridSampler needs: choices, or every step of an int/float range."""
    grid = {}
    for name, spec in params.items():
        if spec["type"] == "categorical":
            grid[name] = list(spec["choices"])
        elif spec["type"] == "int":
            grid[name] = list(range(spec["low"], spec["high"] + 1, spec.get("step", 1)))
        else:
            n = int(round((spec["high"] - spec["low"]) / spec["step"])) + 1
            grid[name] = [float(v) for v in np.linspace(spec["low"], spec["low"] + (n - 1) * spec["step"], n)]
    return grid


def build_sampler(space: Space) -> optuna.samplers.BaseSampler:
    """The sampler the space names, with its options and seed.

    A seeded sampler is a ``WorkerSeededSampler``: each process sharing the study (workers, a resumed run) draws
    its own sequence, the one that runs trial 0 the seed's. QMC keeps one seed everywhere: its processes share
    one low-discrepancy sequence, indexed through the study."""
    cfg = space.study.sampler
    cls = getattr(optuna.samplers, SAMPLERS[cfg.name])

    def build(seed: int | None) -> optuna.samplers.BaseSampler:
        options = dict(cfg.options)
        if cfg.name == "tpe" and space.conditions and "group" not in options:
            # Conditional parameters: TPE models each group of parameters that occur together (Optuna's advice
            # for conditional spaces) instead of falling back to independent sampling.
            options.update(group=True, multivariate=True)
        if cfg.name == "grid":
            options["search_space"] = grid_search_space(space.params)
        if seed is not None:
            options["seed"] = seed
        with warnings.catch_warnings():  # gp and qmc are "experimental" in Optuna: the user chose them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**options)

    if cfg.seed is None or cfg.name == "qmc":
        return build(cfg.seed)
    return WorkerSeededSampler(build, cfg.seed)


def build_pruner(space: Space) -> optuna.pruners.BasePruner:
    """The pruner the space names, with its options (``none`` never prunes).

    ``n_warmup_steps: W`` keeps Optuna's meaning, no pruning until a trial has made more than W reports: Optuna's
    pruners compare it with the step index, which counts from 0 in Optuna's examples and from 1 in hpsearch (report
    k comes after k / reports_per_epoch epochs, also for Hyperband's resources), so it is passed on as W + 1.
    """
    return _pruner(space.study.pruner)


def _pruner(cfg: Pruner) -> optuna.pruners.BasePruner:
    cls = getattr(optuna.pruners, PRUNERS[cfg.name])
    if cfg.name == "patient":
        wrapped = _pruner(cfg.wrapped) if cfg.wrapped else None
        with warnings.catch_warnings():  # PatientPruner is "experimental" in Optuna: chosen knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(wrapped, **cfg.options)
    options = dict(cfg.options)
    if "n_warmup_steps" in options:  # Optuna counts steps from 0; hpsearch's reports are numbered from 1
        options["n_warmup_steps"] += 1
    return cls(**options)

"""One seed, many processes: a seeded study shared by several ``hpsearch run`` processes must not repeat configs.

Every process builds its sampler from the space file's ``study.sampler.seed``, and processes with one seed draw
one random sequence: local ``--workers``, cluster workers running the same command, and a resumed study (its new
process starts the sequence again) would sample each other's configs, trial for trial, while TPE is in its random
start. ``WorkerSeededSampler`` builds the real sampler when its process gets its first trial: with the seed itself
when that is the study's trial 0, so a fresh one-process study replays exactly as before, and otherwise with a
seed derived from the seed and that trial's number, which the storage gives to one process only.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


def process_seed(seed: int, first_trial: int) -> int:
    """The sampler seed of a process whose first trial is number ``first_trial`` in a study seeded ``seed``."""
    if first_trial == 0:
        return seed
    return int(np.random.SeedSequence([seed, first_trial]).generate_state(1)[0])


class WorkerSeededSampler(optuna.samplers.BaseSampler):
    """Delegates to ``build(seed)``, rebuilt as ``build(process_seed(seed, n))`` at this process's first trial ``n``
    when ``n`` is not 0."""

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        if not callable(build):
            raise TypeError(f"build must be callable, got {build!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self._build = build
        self._seed = seed
        self._sampler = build(seed)
        self._placed = False
        self.seed_used = seed
        """The seed the real sampler has: the study's, until this process's first trial says otherwise."""

    def __str__(self) -> str:
        return f"{type(self).__name__}({self._sampler}, seed={self._seed})"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self._placed:
            self._placed = True
            seed = process_seed(self._seed, trial.number)
            if seed != self.seed_used:
                self.seed_used, self._sampler = seed, self._build(seed)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()

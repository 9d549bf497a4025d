"""A seeded study shared by several processes: each draws its own configs; a fresh one-process study replays."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.config.validation import validate
from hpsearch.study import samplers
from hpsearch.study.seeding import WorkerSeededSampler, process_seed
from tests.helpers import sampler_overrides, space_dict

PARAMS = {"dropout": {"type": "float", "low": 0.0, "high": 0.3},
          "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}}


def _space(tiny_model: Path, tiny_data: dict, name: str = "tpe"):
    raw = space_dict(tiny_model, tiny_data, **sampler_overrides(name, 3))
    raw["params"] = PARAMS
    return validate(raw)


def _objective(space):
    return lambda trial: sum(getattr(space.suggest(trial), k) for k in PARAMS)


def _key(trial: optuna.trial.FrozenTrial) -> tuple:
    return tuple(sorted(trial.params.items()))


@pytest.mark.parametrize("name", ["tpe", "random", "gp"])
def test_two_processes_on_one_seeded_study_sample_different_configs(name: str, tiny_model: Path,
                                                                     tiny_data: dict) -> None:
    """Two workers asking in turn, as `--workers 2` or two machines do: before, both drew the seed's sequence."""
    space = _space(tiny_model, tiny_data, name)
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                            sampler=samplers.build_sampler(space))
    b = optuna.load_study(storage=storage, study_name="s", sampler=samplers.build_sampler(space))
    for _ in range(4):
        ta, tb = a.ask(), b.ask()
        a.tell(ta, _objective(space)(ta))
        b.tell(tb, _objective(space)(tb))
    trials = a.trials
    assert len(trials) == 8 and len({_key(t) for t in trials}) == 8


def test_a_fresh_one_process_study_replays_the_seed(tiny_model: Path, tiny_data: dict) -> None:
    space = _space(tiny_model, tiny_data)
    ours = optuna.create_study(sampler=samplers.build_sampler(space), direction="maximize")
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3), direction="maximize")
    ours.optimize(_objective(space), n_trials=12)  # past TPE's 10 random start trials
    plain.optimize(_objective(space), n_trials=12)
    assert [_key(t) for t in ours.trials] == [_key(t) for t in plain.trials]
    assert ours.sampler.seed_used == 3


def test_a_resumed_study_does_not_repeat_its_first_configs(tiny_model: Path, tiny_data: dict) -> None:
    space = _space(tiny_model, tiny_data)
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                sampler=samplers.build_sampler(space))
    first.optimize(_objective(space), n_trials=3)
    again = optuna.load_study(storage=storage, study_name="s", sampler=samplers.build_sampler(space))
    again.optimize(_objective(space), n_trials=3)  # a new process: `hpsearch run` on the same study
    assert again.sampler.seed_used == process_seed(3, 3) != 3
    assert not {_key(t) for t in again.trials[3:]} & {_key(t) for t in again.trials[:3]}


def test_unseeded_and_qmc_samplers_are_not_wrapped(tiny_model: Path, tiny_data: dict) -> None:
    """QMC's processes must share its seed (one scrambled sequence, indexed through the study)."""
    assert isinstance(samplers.build_sampler(_space(tiny_model, tiny_data, "qmc")), optuna.samplers.QMCSampler)
    raw = space_dict(tiny_model, tiny_data, study__sampler={"name": "tpe"})
    assert isinstance(samplers.build_sampler(validate(raw)), optuna.samplers.TPESampler)
    assert isinstance(samplers.build_sampler(_space(tiny_model, tiny_data)), WorkerSeededSampler)


def test_process_seed_is_the_seed_for_trial_zero_and_distinct_otherwise() -> None:
    assert process_seed(7, 0) == 7
    seeds = {process_seed(7, n) for n in range(1, 200)}
    assert len(seeds) == 199 and 7 not in seeds
    assert process_seed(7, 5) == process_seed(7, 5) != process_seed(8, 5)


def test_constructor_repeats_the_bad_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        WorkerSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), -1)
    with pytest.raises(TypeError, match="42"):
        WorkerSeededSampler(42, 0)  # type: ignore[arg-type]

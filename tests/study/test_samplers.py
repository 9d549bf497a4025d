"""Samplers and pruners: every name builds Optuna's class with the space's options; grids; warm-up counting."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.config.validation import validate
from hpsearch.config.vocabulary import PRUNERS, SAMPLERS
from hpsearch.study import samplers
from tests.helpers import sampler_overrides, space_dict


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_and_samples(name: str, tiny_model: Path, tiny_data: dict) -> None:
    raw = space_dict(tiny_model, tiny_data, **sampler_overrides(name, 1))
    raw["params"] = {"dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
                     "weight_decay": {"type": "categorical", "choices": [0.0, 0.01]}}
    space = validate(raw)
    study = optuna.create_study(sampler=samplers.build_sampler(space), direction="maximize")
    study.optimize(lambda t: space.suggest(t).dropout, n_trials=3)
    assert all(t.params["dropout"] in (0.0, 0.1, 0.2) for t in study.trials)


def test_grid_covers_the_whole_grid(tiny_model: Path, tiny_data: dict) -> None:
    raw = space_dict(tiny_model, tiny_data, study__sampler={"name": "grid"})
    raw["params"] = {"dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
                     "num_frozen_layers": {"type": "int", "low": 0, "high": 2, "step": 2}}
    grid = samplers.grid_search_space(validate(raw).params)
    assert grid == {"dropout": [0.0, 0.1, 0.2], "num_frozen_layers": [0, 2]}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_is_the_optuna_class_it_names_with_its_options(name: str, tiny_model: Path,
                                                                    tiny_data: dict) -> None:
    options = {"percentile": {"percentile": 25.0}, "patient": {"patience": 2},
               "median": {"n_startup_trials": 7}, "hyperband": {"min_resource": 2},
               "successive_halving": {"reduction_factor": 3}}.get(name, {})
    space = validate(space_dict(tiny_model, tiny_data, study__pruner={"name": name, "options": options}))
    pruner = samplers.build_pruner(space)
    assert type(pruner).__name__ == PRUNERS[name]
    seen = {"percentile": "_percentile", "patient": "_patience", "median": "_n_startup_trials",
            "hyperband": "_min_resource", "successive_halving": "_reduction_factor"}.get(name)
    if seen:  # the option reached the constructor
        assert getattr(pruner, seen) == next(iter(options.values()))


def test_patient_pruner_wraps_the_pruner_it_names(tiny_model: Path, tiny_data: dict) -> None:
    cfg = {"name": "patient", "options": {"patience": 1, "min_delta": 0.01},
           "wrapped": {"name": "median", "options": {"n_warmup_steps": 3}}}
    pruner = samplers.build_pruner(validate(space_dict(tiny_model, tiny_data, study__pruner=cfg)))
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner) and pruner._patience == 1
    assert pruner._wrapped_pruner._n_warmup_steps == 4  # 3 reports spared; hpsearch's reports count from 1


@pytest.mark.parametrize("name", ["median", "percentile"])
def test_warmup_spares_as_many_reports_as_it_says(name: str, tiny_model: Path, tiny_data: dict) -> None:
    """Reports are numbered from 1: `n_warmup_steps: 1` must spare the first, as Optuna's docs say (it spared none)."""
    options = {"n_startup_trials": 1, "n_warmup_steps": 1, **({"percentile": 50.0} if name == "percentile" else {})}
    space = validate(space_dict(tiny_model, tiny_data, study__pruner={"name": name, "options": options}))
    study = optuna.create_study(direction="maximize", pruner=samplers.build_pruner(space))
    good = study.ask()
    for step in (1, 2, 3):
        good.report(0.9, step)
    study.tell(good, 0.9)
    poor = study.ask()
    poor.report(0.1, 1)
    assert not poor.should_prune()  # the first report is warm-up
    poor.report(0.1, 2)
    assert poor.should_prune()

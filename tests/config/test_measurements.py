"""One table of what a trial measures: every name a constraint or an objective may use is recorded by a real
trial, as the table says (its unit, its rounding), and validation takes its names from the table."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpsearch.config.load import load_space
from hpsearch.config.measurements import CONSTRAINTS, MEASUREMENTS, OBJECTIVES
from hpsearch.config.options import RunOptions
from hpsearch.errors import ConfigError
from hpsearch.finetune.state import TrainingState
from hpsearch.study import runner
from hpsearch.study.progress import Progress


def test_every_training_measurement_reads_a_field_of_the_training_state() -> None:
    state = TrainingState(total_steps=1, train_examples=1, reports_per_epoch=1)
    names = {f.name for f in dataclasses.fields(TrainingState)} | {
        n for n in dir(TrainingState) if isinstance(getattr(TrainingState, n), property)}
    for m in MEASUREMENTS:
        if m.source == "training":
            assert m.field in names, m.name
            assert isinstance(getattr(state, m.field), (int, float)), m.name


def test_a_trial_records_every_measurement_a_constraint_or_an_objective_may_name(make_space, tmp_path: Path) -> None:
    """One two-objective trial (accuracy and latency) with a bound on every constraint-able measurement: all of them
    recorded as the table says, every bound set as an Optuna constraint."""
    bounds = [f"{name} >= 0" if name.endswith("_per_s") else f"{name} <= 1000000000" for name in CONSTRAINTS]
    space = load_space(make_space(fixed__epochs=1, study__metrics=["accuracy", "latency_ms"], study__metric=None,
                                  study__pruner={"name": "none"}, study__constraints=bounds))
    options = RunOptions(storage=f"sqlite:///{tmp_path}/m.db", trials=1, study_name="measured")
    (trial,) = runner.run_study(space, options, progress=Progress()).trials
    for m in MEASUREMENTS:
        assert m.name in trial.user_attrs, m.name
        value = trial.user_attrs[m.name]
        assert isinstance(value, (int, float)) and value == m.stored(value), (m.name, value)
    assert set(trial.constraints) == set(bounds)
    assert 1.0 <= trial.user_attrs["padding_ratio"] < 2.0  # length-grouped batches: little padding
    assert set(OBJECTIVES) <= {m.name for m in MEASUREMENTS} and trial.values[1] > 0  # latency_ms, measured


def test_validation_takes_the_names_from_the_table(make_space) -> None:
    with pytest.raises(ConfigError, match="did you mean peak_memory_mb"):
        load_space(make_space(study__constraints=["peak_memory <= 1"]))
    with pytest.raises(ConfigError, match=f"a measurement \\({', '.join(OBJECTIVES)}\\)"):
        load_space(make_space(study__metrics=["accuracy", "speed"], study__metric=None, study__pruner={"name": "none"}))
    for name in CONSTRAINTS:
        load_space(make_space(study__constraints=[f"{name} <= 10"]))

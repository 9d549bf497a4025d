"""The study runner and objective in-process: samplers, pruners, real pruning, failing trials, resume checks."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch import runner
from hpsearch.errors import UsageError
from hpsearch.progress import Progress
from hpsearch.schema import PRUNERS, SAMPLERS
from hpsearch.space import load_space
from hpsearch.validation import validate
from hpsearch.storage import open_storage
from hpsearch.tasks.classification import SequenceClassification
from tests.conftest import sampler_overrides, space_dict


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_and_samples(name: str, tiny_model: Path, tiny_data: dict) -> None:
    raw = space_dict(tiny_model, tiny_data, **sampler_overrides(name, 1))
    raw["params"] = {"dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
                     "weight_decay": {"type": "categorical", "choices": [0.0, 0.01]}}
    space = validate(raw)
    study = optuna.create_study(sampler=runner.build_sampler(space), direction="maximize")
    study.optimize(lambda t: space.suggest(t)["dropout"], n_trials=3)
    assert all(t.params["dropout"] in (0.0, 0.1, 0.2) for t in study.trials)


def test_grid_covers_the_whole_grid(tiny_model: Path, tiny_data: dict) -> None:
    raw = space_dict(tiny_model, tiny_data, study__sampler={"name": "grid"})
    raw["params"] = {"dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
                     "num_frozen_layers": {"type": "int", "low": 0, "high": 2, "step": 2}}
    grid = runner.grid_search_space(validate(raw).params)
    assert grid == {"dropout": [0.0, 0.1, 0.2], "num_frozen_layers": [0, 2]}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds(name: str, tiny_model: Path, tiny_data: dict) -> None:
    options = {"percentile": {"percentile": 25.0}, "patient": {"patience": 2}}.get(name, {})
    space = validate(space_dict(tiny_model, tiny_data, study__pruner={"name": name, "options": options}))
    assert isinstance(runner.build_pruner(space), optuna.pruners.BasePruner)


def test_patient_pruner_wraps_the_pruner_it_names(tiny_model: Path, tiny_data: dict) -> None:
    cfg = {"name": "patient", "options": {"patience": 1, "min_delta": 0.01},
           "wrapped": {"name": "median", "options": {"n_warmup_steps": 3}}}
    pruner = runner.build_pruner(validate(space_dict(tiny_model, tiny_data, study__pruner=cfg)))
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner) and pruner._patience == 1
    assert pruner._wrapped_pruner._n_warmup_steps == 4  # 3 reports spared; hpsearch's reports count from 1


@pytest.mark.parametrize("name", ["median", "percentile"])
def test_warmup_spares_as_many_reports_as_it_says(name: str, tiny_model: Path, tiny_data: dict) -> None:
    """Reports are numbered from 1: `n_warmup_steps: 1` must spare the first, as Optuna's docs say (it spared none)."""
    options = {"n_startup_trials": 1, "n_warmup_steps": 1, **({"percentile": 50.0} if name == "percentile" else {})}
    space = validate(space_dict(tiny_model, tiny_data, study__pruner={"name": name, "options": options}))
    study = optuna.create_study(direction="maximize", pruner=runner.build_pruner(space))
    good = study.ask()
    for step in (1, 2, 3):
        good.report(0.9, step)
    study.tell(good, 0.9)
    poor = study.ask()
    poor.report(0.1, 1)
    assert not poor.should_prune()  # the first report is warm-up
    poor.report(0.1, 2)
    assert poor.should_prune()


def _run(make_space, tmp_path: Path, n: int, **overrides):
    space = load_space(make_space(**overrides))
    return runner.run_study(space, storage_url=f"sqlite:///{tmp_path}/r.db", n_trials=n, progress=Progress())


def test_pruning_prunes_a_hopeless_trial(make_space, tmp_path: Path) -> None:
    good = {"learning_rate": 5e-3, "dropout": 0.0}
    study = _run(make_space, tmp_path, 3, fixed__epochs=3,
                 study__enqueue=[good, good, {"learning_rate": 1e-6, "dropout": 0.0}],
                 params__learning_rate={"type": "float", "low": 1e-6, "high": 1e-2, "log": True})
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], [t.intermediate_values for t in study.trials]
    pruned = study.trials[2]
    assert 1 <= pruned.user_attrs["pruned_at_report"] < 6 and pruned.user_attrs["status"] == "pruned"
    assert pruned.user_attrs["epochs_completed"] < 3 and len(pruned.intermediate_values) < 6
    assert len(study.trials[0].intermediate_values) == 6  # 2 reports per epoch, 3 epochs, steps 1..6


def test_non_finite_loss_fails_the_trial_and_the_study_goes_on(make_space, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SequenceClassification, "loss", lambda self, logits, labels: logits.sum() * float("inf"))
    study = _run(make_space, tmp_path, 2)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("non-finite loss" in t.user_attrs["fail_reason"] for t in study.trials)


def test_resume_with_other_metric_is_refused_before_writing(make_space, tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/r.db")
    space = load_space(make_space())
    runner.open_study(storage, "s", space)
    other = load_space(make_space("o.yaml", study__metric="eval_loss"))
    with pytest.raises(UsageError, match="direction=maximize, metric=accuracy"):
        runner.open_study(storage, "s", other)
    assert optuna.load_study(study_name="s", storage=storage).user_attrs["metric"] == "accuracy"


def test_resume_with_changed_config_warns_and_keeps_both(make_space, tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/r.db")
    runner.open_study(storage, "s", load_space(make_space()))
    notes: list[str] = []
    changed = load_space(make_space("c.yaml", fixed__epochs=3))
    study = runner.open_study(storage, "s", changed, warn=notes.append)
    assert len(notes) == 1 and "fixed.epochs" in notes[0]
    assert sum(k.startswith("config:") for k in study.user_attrs) == 2


def test_enqueued_configs_are_not_repeated_on_resume(make_space, tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/r.db")
    space = load_space(make_space(study__enqueue=[{"learning_rate": 1e-3, "dropout": 0.1}]))
    runner.open_study(storage, "s", space)
    study = runner.open_study(storage, "s", space)
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_warm_start_enqueues_an_earlier_studys_best_configs_as_this_space_takes_them(make_space,
                                                                                     tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/w.db")
    earlier = optuna.create_study(study_name="earlier", storage=storage, direction="maximize")
    dists = {"learning_rate": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
             "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
             "batch_size": optuna.distributions.CategoricalDistribution([8, 16])}
    for value, lr, drop in ((0.9, 1e-3, 0.1), (0.8, 2e-3, 0.4), (0.95, 5e-4, 0.15), (0.7, 1e-3, 0.05),
                            (0.85, 1e-5, 0.1)):
        earlier.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr, "dropout": drop, "batch_size": 8}, distributions=dists, value=value))
    space = load_space(make_space())  # searches learning_rate in [1e-4, 3e-3] and dropout in [0, 0.2]
    seeds = runner.warm_start_params(storage, "earlier", space)
    # best first; batch_size is not searched here; dropout 0.4 and learning rate 1e-5 are out of range: left out
    assert seeds == [{"learning_rate": 5e-4, "dropout": 0.15}, {"learning_rate": 1e-3, "dropout": 0.1},
                     {"dropout": 0.1}]
    study = runner.open_study(storage, "new", space, warm_start="earlier")
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert [dict(w) for w in waiting] == seeds
    with pytest.raises(UsageError, match="no such study"):
        runner.warm_start_params(storage, "nope", space)
    optuna.create_study(study_name="minimizing", storage=storage, direction="minimize")
    with pytest.raises(UsageError, match="minimizes"):
        runner.warm_start_params(storage, "minimizing", space)

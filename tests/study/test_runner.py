"""The study runner and objective in-process: real pruning, failing trials, resume checks, warm starts."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.config.load import load_space
from hpsearch.config.options import RunOptions
from hpsearch.errors import UsageError
from hpsearch.study import runner
from hpsearch.study.progress import Progress
from hpsearch.study.storage import open_storage
from hpsearch.tasks.classification import SequenceClassification


def _run(make_space, tmp_path: Path, n: int, **overrides):
    space = load_space(make_space(**overrides))
    return runner.run_study(space, RunOptions(storage=f"sqlite:///{tmp_path}/r.db", trials=n), progress=Progress())


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
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]  # learnable by the sampler; status says why
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

"""What hpsearch stores on a study and how it reads it back: one ranking, best first, in either direction."""
from __future__ import annotations

import optuna
import pytest

from hpsearch.study import record


def _study(direction: str, values: tuple[float, ...]) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for value in values:
        study.enqueue_trial({"x": value})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=len(values))
    return study


def test_ranking_puts_confirmed_trials_first_by_their_score() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.90, 0.85, 0.80, 0.95):
        study.enqueue_trial({"x": value})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    assert [t.number for t in record.ranked_trials(study)] == [3, 0, 1, 2]
    study.set_user_attr(record.confirm_key(3), {"values": [0.95, 0.70], "score": 0.825, "seconds": 1.0})
    study.set_user_attr(record.confirm_key(0), {"values": [0.90, 0.86], "score": 0.88, "seconds": 1.0})
    study.set_user_attr(record.confirm_key(1), {"claimed": True})  # taken by a worker, not finished: not confirmed
    assert [t.number for t in record.ranked_trials(study)] == [0, 3, 1, 2]
    assert set(record.confirmations(study)) == {0, 3}


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_new_trial_ranks_where_ranked_trials_would_put_it(direction: str) -> None:
    """--keep-best decides to keep a running trial's model by the same order it later prunes by."""
    study = _study(direction, (0.90, 0.85, 0.80, 0.95))
    best_first = [t.value for t in record.ranked_trials(study)]
    assert best_first == sorted(best_first, reverse=direction == "maximize")
    for value in (0.99, 0.87, 0.10):
        ahead = record.rank_of_new(study, value)
        assert ahead == sum(record.better(study, v, value) for v in best_first)
    study.set_user_attr(record.confirm_key(2), {"values": [0.80], "score": 0.80, "seconds": 1.0})
    # A confirmed trial ranks ahead of any unconfirmed one, so a new trial counts it ahead whatever its value.
    assert record.rank_of_new(study, 0.99 if direction == "maximize" else 0.01) == 1


def test_best_trials_of_a_study_without_a_completed_trial_says_what_it_has() -> None:
    study = optuna.create_study()
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    with pytest.raises(record.UsageError, match="no completed trial yet .1 pruned."):
        record.best_trials(study)


def test_a_trial_config_comes_from_its_own_id_else_the_latest() -> None:
    study = optuna.create_study()
    record.store_config(study, "aaa", {"fixed": {"seed": 1}}, "accuracy")
    record.store_config(study, "bbb", {"fixed": {"seed": 2}}, "accuracy")
    study.optimize(lambda t: t.set_user_attr(record.CONFIG_ID, "aaa") or 0.5, n_trials=1)
    study.optimize(lambda t: 0.6, n_trials=1)
    assert record.trial_config(study, study.trials[0]) == {"fixed": {"seed": 1}}
    assert record.trial_config(study, study.trials[1]) == {"fixed": {"seed": 2}}  # no id of its own: the latest
    assert record.study_metric(study) == "accuracy" and study.user_attrs[record.VERSION]

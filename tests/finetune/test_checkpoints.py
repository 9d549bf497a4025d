"""Early stopping and the best checkpoint kept: the policy on trivial sequences, then in the real loop."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hpsearch.config.validation import validate
from hpsearch.finetune import evaluation as E
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import state as S
from hpsearch.finetune.checkpoints import Selection, Tracker
from tests.helpers import CPU, space_dict, trial_hp


def _feed(policy: Selection, values: list[float]) -> tuple[Tracker, int]:
    """Feed checkpoint values to a tracker over a one-parameter model whose weight is the value; return where it
    stopped (the number of checkpoints seen)."""
    model = torch.nn.Linear(1, 1, bias=False)
    tracker = Tracker(policy)
    for i, v in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(v)
        if tracker.update(model, {policy.metric: v}, report=i, epoch=float(i)):
            return tracker, i
    return tracker, len(values)


def test_patience_counts_checkpoints_without_a_gain_larger_than_min_delta() -> None:
    tracker, seen = _feed(Selection("acc", maximize=True, patience=2, min_delta=0.01), [0.5, 0.7, 0.705, 0.69, 0.9])
    assert seen == 4 and tracker.stopped_early  # 0.705 is not a gain > 0.01, nor 0.69: two in a row
    assert tracker.best_value == 0.7 and tracker.best_report == 2
    tracker, seen = _feed(Selection("acc", maximize=True, patience=2), [0.5, 0.7, 0.6, 0.8, 0.7])
    assert seen == 5 and not tracker.stopped_early and tracker.best_value == 0.8


def test_minimized_metrics_improve_downwards() -> None:
    tracker, _ = _feed(Selection("loss", maximize=False, keep="best"), [0.9, 0.4, 0.6])
    assert tracker.best_value == 0.4 and tracker.best_report == 2
    assert float(tracker.weights["weight"]) == pytest.approx(0.4)  # the weights of that checkpoint


def test_keep_last_copies_no_weights() -> None:
    tracker, _ = _feed(Selection("acc", maximize=True, keep="last"), [0.1, 0.2])
    assert tracker.weights is None


@pytest.mark.parametrize("kwargs", [{"keep": "first"}, {"patience": 0}, {"min_delta": -1.0}])
def test_bad_policy_is_refused_with_the_value(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=repr(next(iter(kwargs.values())))):
        Selection("acc", maximize=True, **kwargs)


def test_space_validates_early_stopping_and_trial_value(tiny_model, tiny_data) -> None:
    space = validate(space_dict(tiny_model, tiny_data, study__early_stopping={"patience": 2}))
    assert space.config["study"]["early_stopping"] == {"patience": 2, "min_delta": 0.0}
    assert space.study.early_stopping.patience == 2
    assert space.study.trial_value == "best"
    bad = space_dict(tiny_model, tiny_data, study__early_stopping={"patience": 0, "min_delta": -1, "wait": 3},
                     study__trial_value="first")
    with pytest.raises(Exception) as info:
        validate(bad, source="s.yaml")
    text = str(info.value)
    for key in ("study.early_stopping.patience", "study.early_stopping.min_delta", "study.early_stopping.wait",
                "study.trial_value"):
        assert key in text, key


def _train(space, data, selection: Selection, **hp):
    params = trial_hp(space, **hp)
    model = M.build_model(space.model, params, data, CPU)
    settings = S.TrainSettings(reports_per_epoch=2, intermediate_eval_samples=16, selection=selection)
    return model, T.train(model, data, params, settings, device=CPU)


def test_best_checkpoint_weights_and_metrics_are_what_the_run_ends_with(setup) -> None:
    """With keep best, the model ends with its best checkpoint's weights: evaluating it again gives that value."""
    space, data = setup
    policy = Selection("eval_loss", maximize=False, keep="best")
    # A learning rate so high that the loss rises again late in training: the best checkpoint is not the last.
    model, result = _train(space, data, policy, epochs=4, learning_rate=0.05, scheduler="constant")
    checkpoints = [h for h in result.history if h["full"]]
    assert [h["report"] for h in checkpoints] == [2, 4, 6, 8]  # every epoch end on the whole validation set
    assert not any(h["full"] for h in result.history if h["report"] % 2)  # intermediate ones on the subset
    best = min(checkpoints, key=lambda h: h["eval_loss"])
    assert best["report"] < checkpoints[-1]["report"]  # so the run really went back to earlier weights
    assert result.metrics["eval_loss"] == best["eval_loss"] and result.selection["best_report"] == best["report"]
    again = E.evaluate(model, data.validation, data, CPU)
    assert again["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-4)
    assert again["accuracy"] == best["accuracy"]


def test_early_stopping_ends_training_and_says_where(setup) -> None:
    space, data = setup
    policy = Selection("accuracy", maximize=True, keep="last", patience=1, min_delta=1.0)  # nothing gains 1.0
    _, result = _train(space, data, policy, epochs=5)
    assert result.selection["stopped_early"] and result.selection["best_report"] == 2
    assert result.epochs_completed == 2.0 and result.history[-1]["report"] == 4  # stopped after epoch 2 of 5
    assert result.metrics == {k: v for k, v in result.history[-1].items() if k not in ("report", "step", "epoch",
                                                                                         "full")}


def test_without_a_policy_the_loop_is_unchanged(setup) -> None:
    space, data = setup
    params = trial_hp(space, epochs=2)
    settings = S.TrainSettings(reports_per_epoch=2, intermediate_eval_samples=16)
    plain = T.train(M.build_model(space.model, params, data, CPU), data, params, settings, device=CPU)
    last = T.train(M.build_model(space.model, params, data, CPU), data, params,
                   replace(settings, selection=Selection("accuracy", True)), device=CPU)
    assert [h["full"] for h in plain.history] == [False, False, False, True]
    assert plain.metrics == last.metrics and plain.selection == {}

"""Memory given back: nothing of a trial (its model, its optimizer) is alive when the next trial builds its model,
however the trial ended. On a GPU a survivor doubles the peak of the next trial; here weak references tell."""
from __future__ import annotations

import weakref

import optuna
import pytest
import torch

from hpsearch.finetune import loop, recipe
from hpsearch.finetune import optim as O
from hpsearch.finetune.precision import FP32
from hpsearch.finetune.recipe import Prepared
from hpsearch.study.objective import Objective
from hpsearch.tasks.classification import SequenceClassification
from tests.helpers import CPU

ENDINGS = ("complete", "pruned", "non-finite loss", "out of memory", "allocation error", "interrupted")


def _inject(ending: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first trial end as ``ending`` (at its first step: the model and optimizer exist, gradients too)."""
    loss = SequenceClassification.loss
    calls = {"n": 0}

    def failing(self, logits, labels):
        calls["n"] += 1
        value = loss(self, logits, labels)
        if calls["n"] == 1 and ending == "non-finite loss":
            return value * float("nan")
        if calls["n"] <= 5 and ending == "out of memory":  # batch 16, then micro-batches of 8, 4, 2 and 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        if calls["n"] == 1 and ending == "allocation error":
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        if calls["n"] == 1 and ending == "interrupted":
            raise KeyboardInterrupt
        return value

    monkeypatch.setattr(SequenceClassification, "loss", failing)


@pytest.mark.parametrize("ending", ENDINGS)
def test_nothing_of_a_trial_is_alive_when_the_next_one_starts(ending: str, setup,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    space, data = setup
    alive: list[weakref.ref] = []
    build, make_optimizer = recipe.build_model, O.make_optimizer

    def tracked_build(*args, **kwargs):
        left = [r() for r in alive if r() is not None]
        assert not left, f"still alive when the next trial starts: {[type(x).__name__ for x in left]}"
        model = build(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    def tracked_optimizer(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        alive.append(weakref.ref(optimizer))
        return optimizer

    monkeypatch.setattr(recipe, "build_model", tracked_build)
    monkeypatch.setattr(loop, "make_optimizer", tracked_optimizer)
    _inject(ending, monkeypatch)
    pruner = optuna.pruners.ThresholdPruner(lower=2.0) if ending == "pruned" else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    objective = Objective(space, Prepared(CPU, data, FP32))
    if ending == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            study.optimize(objective, n_trials=2)
        assert study.trials[0].state.name == "FAIL"
    else:
        study.optimize(objective, n_trials=2)
        assert len(alive) == 4  # both trials built a model and an optimizer
        first = study.trials[0]
        assert first.state.name == ("COMPLETE" if ending == "complete" else "PRUNED")  # a failure: PRUNED, see below
        if ending not in ("complete", "pruned"):
            reason = "non-finite loss" if ending == "non-finite loss" else "out of memory"
            assert first.user_attrs["fail_reason"].startswith(reason)
            assert first.user_attrs["status"] == f"failed: {reason}"
            assert first.constraints == {reason.replace(" ", "_").replace("-", "_"): 1.0}  # what TPE learns from
    assert [r() for r in alive if r() is not None] == []  # the last trial's too


def test_out_of_memory_halves_the_micro_batch_when_the_batch_size_chose_it(setup, monkeypatch) -> None:
    """micro_batch_size 0 (the default): an out-of-memory step is retried with half as many rows per pass, and the
    trial records the micro-batch it ended with; a micro_batch_size that was set is kept (the trial fails)."""
    space, data = setup
    loss = SequenceClassification.loss
    calls = {"n": 0}

    def oom_once(self, logits, labels):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return loss(self, logits, labels)

    monkeypatch.setattr(SequenceClassification, "loss", oom_once)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(Objective(space, Prepared(CPU, data, FP32)), n_trials=1)
    assert study.trials[0].state.name == "COMPLETE" and study.trials[0].user_attrs["micro_batch_size"] == 8
    calls["n"] = 0
    fixed = space.with_params({"learning_rate": 1e-3, "dropout": 0.0, "micro_batch_size": 16})
    study.optimize(Objective(fixed, Prepared(CPU, data, FP32)), n_trials=1)
    assert study.trials[1].state.name == "PRUNED" and "out of memory" in study.trials[1].user_attrs["fail_reason"]

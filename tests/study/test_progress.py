"""The live view and the --quiet log lines show trial number, params, value, state, best so far, current trial."""
from __future__ import annotations

import io
import sys

import optuna
import pytest
from rich.console import Console

from hpsearch.study.progress import LiveProgress, LogProgress, make_progress


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="demo")
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    for value, state in ((0.81, optuna.trial.TrialState.COMPLETE), (None, optuna.trial.TrialState.PRUNED),
                         (0.86, optuna.trial.TrialState.COMPLETE)):
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"learning_rate": 2e-4},
                                                  distributions=dist, intermediate_values={1: 0.5},
                                                  user_attrs={"val_accuracy": 0.52}))
    return study


def test_live_view_shows_trials_best_and_current_trial() -> None:
    study = _study()
    console = Console(file=io.StringIO(), width=140, record=True)
    view = LiveProgress(console=console)
    view.study, view.metric, view.n_trials = study, "accuracy", 10
    for t in study.trials:
        view(study, t)
    view.trial_started(3, {"learning_rate": 3e-4, "dropout": 0.1})
    view.trial_step(3, 12, 40)
    view.trial_evaluated(3, 0.4321, {"accuracy": 0.77})
    console.print(view)
    text = console.export_text()
    assert "trials 3/10" in text and "best accuracy 0.8600 (trial 2)" in text
    assert "PRUNED" in text and "COMPLETE" in text and "0.5200" in text  # a pruned trial shows its last value
    assert "trial 3 running" in text and "step 12/40" in text and "loss 0.4321" in text
    assert "last accuracy 0.7700" in text and "learning_rate=0.0003" in text


def test_the_live_view_shows_every_member_of_a_fused_group_from_host_numbers() -> None:
    """Members of a fused group run at once: each has its line; what the refresh thread reads are plain numbers
    (a device tensor read from there would wait for the device, and break a CUDA graph being captured)."""
    study = _study()
    console = Console(file=io.StringIO(), width=140, record=True)
    view = LiveProgress(console=console)
    view.study, view.metric, view.n_trials = study, "accuracy", 10
    for n, step in ((4, 7), (5, 9), (6, 2)):
        view.trial_started(n, {"learning_rate": 1e-4 * n})
        view.trial_step(n, step, 40)
    view.trial_evaluated(5, 0.25, {"accuracy": 0.6})
    view(study, optuna.trial.FrozenTrial(number=4, state=optuna.trial.TrialState.PRUNED, value=None, values=None,
                                         datetime_start=None, datetime_complete=None, params={}, distributions={},
                                         user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=4))
    console.print(view)
    text = console.export_text()
    assert "trial 4 running" not in text
    assert "trial 5 running  step 9/40  loss 0.2500  last accuracy 0.6000" in text
    assert "trial 6 running  step 2/40" in text
    assert all(type(v) in (int, float, dict, type(None)) for c in view.running.values() for v in c.values())


def test_quiet_log_lines() -> None:
    study = _study()
    out = io.StringIO()
    log = LogProgress(stream=out)
    log.trial_started(3, {"learning_rate": 3e-4})
    log(study, study.trials[2])
    lines = out.getvalue().splitlines()
    assert "trial 3 started: learning_rate=0.0003" in lines[0]
    assert "trial 2 COMPLETE: value=0.8600" in lines[1] and "best=0.8600 (trial 2)" in lines[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet, terminal, view", [(True, True, LogProgress), (True, False, LogProgress),
                                                   (False, False, LogProgress), (False, True, LiveProgress)])
def test_the_live_view_only_on_a_terminal_and_without_quiet(quiet: bool, terminal: bool, view: type,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal() if terminal else io.StringIO())
    assert type(make_progress(quiet=quiet)) is view

"""Ctrl-C / SIGTERM during a study are held until a safe point, on trivial objectives and through the real CLI."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest

from hpsearch import interrupts


@pytest.fixture(autouse=True)
def _terminal_signals():
    """The handlers a program started from a terminal has, whatever this suite was started with (SIGINT ignored
    in the background): these tests are about what hpsearch does with them."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def _signal_self(sig: int = signal.SIGINT) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs at the next bytecode of the main thread


def test_a_first_signal_is_held_until_check_and_raised_there(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyboardInterrupt) as raised:
        with interrupts.handled():
            _signal_self()
            x = sum(range(1000))  # code after the signal runs: nothing was raised inside it
            assert x == 499500 and interrupts.requested()
            interrupts.check()
            pytest.fail("check() did not raise the held signal")
    assert type(raised.value) is KeyboardInterrupt
    assert not interrupts.requested()
    assert "[hpsearch] interrupted: stopping at the next training step" in capfd.readouterr().err


def test_sigterm_is_held_and_raised_as_terminated(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(interrupts.Terminated):
        with interrupts.handled():
            _signal_self(signal.SIGTERM)
            interrupts.check()
    assert "[hpsearch] terminated (SIGTERM): stopping at the next training step" in capfd.readouterr().err


def test_a_signal_held_by_an_outer_handled_survives_an_inner_one_and_its_check_raises_it() -> None:
    """A worker holds signals from its first line and the study holds them again around its trials: a Ctrl-C that
    came during the worker's setup must not be dropped by the inner handled(), and stops it before any trial."""
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            _signal_self()  # during setup
            with interrupts.handled():
                assert interrupts.requested()
                interrupts.check()  # where the study checks before its first trial
                pytest.fail("the inner check did not raise the signal held outside")
    assert signal.getsignal(signal.SIGINT) is before and not interrupts.requested()
    with interrupts.handled():  # an inner one that ends with nothing held leaves the outer's handlers in place
        with interrupts.handled():
            pass
        assert signal.getsignal(signal.SIGINT) is not before
        _signal_self()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()


def test_leaving_with_a_held_signal_raises_it_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            assert signal.getsignal(signal.SIGINT) is not before[0]
            _signal_self()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with interrupts.handled():  # nothing held: leaves quietly
        pass


def test_a_second_signal_forces_unless_it_is_the_same_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            _signal_self()
            _signal_self()  # within FORCE_AFTER_S: a forwarded copy of the first, still held
            assert interrupts.requested()
            monkeypatch.setattr(interrupts, "FORCE_AFTER_S", 0.0)
            try:
                _signal_self()
                time.sleep(0.05)
            except KeyboardInterrupt:
                assert not interrupts.requested()
                raise
            pytest.fail("a later second signal did not raise at once")


def test_an_ignored_sigint_stays_ignored_and_other_threads_are_left_alone() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _signal_self()
            assert not interrupts.requested()
    finally:
        signal.signal(signal.SIGINT, previous)
    errors: list[Exception] = []

    def in_a_thread() -> None:  # Python delivers signals to the main thread only; signal.signal raises elsewhere
        try:
            with interrupts.handled():
                pass
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == []


def test_a_held_signal_stops_the_study_after_the_running_trial() -> None:
    study = optuna.create_study()

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            _signal_self()
        return x

    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            study.optimize(objective, n_trials=10, callbacks=[interrupts.stop_study])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_a_signal_during_a_report_lets_the_write_finish_then_fails_the_trial(make_space, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch.config.load import load_space
    from hpsearch.config.options import RunOptions
    from hpsearch.study import runner
    from hpsearch.study.objective import _Reporter
    from hpsearch.study.progress import Progress

    real, written = _Reporter.on_evaluate, []

    def on_evaluate(self, state, metrics) -> None:  # the signal arrives as the trial reports to the storage
        if not written:
            _signal_self()
        real(self, state, metrics)
        written.append(state.report)

    monkeypatch.setattr(_Reporter, "on_evaluate", on_evaluate)
    url = f"sqlite:///{tmp_path}/i.db"
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(load_space(make_space(fixed__epochs=3)), RunOptions(storage=url, trials=3, study_name="i"),
                         progress=Progress())
    trial, continuation = optuna.load_study(study_name="i", storage=url).trials  # stopped with its running trial
    assert written == [1] and trial.intermediate_values.keys() == {1}
    assert trial.state.name == "FAIL" and trial.user_attrs["status"] == "failed: interrupted"
    assert continuation.state.name == "WAITING" and continuation.intermediate_values.keys() == {1}

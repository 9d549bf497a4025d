"""Durable trials, the study side (:mod:`hpsearch.study.durable`): a trial stopped by SIGTERM is saved, failed for a
retry and continued by the same command to the value it would have had; its reports stay one curve; checkpoints
live in the artifact store one per running trial and are gone when trials end; a store that fails keeps the
checkpoint before; a retry's inherited heartbeat does not make it stale. (Killed workers, other storages and fused
members: tests/study/test_workers.py, test_storages.py, test_fused_study.py.)"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest

from hpsearch.study import record
from hpsearch.study.objective import _Reporter


def _space(make_space, **kw):
    """One enqueued config, no pruner, dropout on (random states matter), 4 epochs of 2 reports."""
    return make_space(fixed__epochs=4, study__pruner="none", study__enqueue=[{"learning_rate": 1e-3, "dropout": 0.1}],
                      **kw)


def _signal_at(step: int, monkeypatch: pytest.MonkeyPatch, sig: int = signal.SIGTERM) -> None:
    """Send this process ``sig`` once trial 0 reaches training step ``step`` (the worker's handler holds it)."""
    real = _Reporter.on_step

    def on_step(self, state) -> None:
        if self.trial.number == 0 and state.step == step:
            os.kill(os.getpid(), sig)
        real(self, state)

    monkeypatch.setattr(_Reporter, "on_step", on_step)


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=url)


def _artifacts(tmp_path: Path, db: str) -> list[Path]:
    folder = tmp_path / f"{db}-artifacts"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_terminated_trial_is_continued_by_the_same_command_to_the_same_value(make_space, hpsearch, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    space = str(_space(make_space))
    hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", f"sqlite:///{tmp_path}/ref.db",
             check=True)
    (reference,) = _study(f"sqlite:///{tmp_path}/ref.db").trials
    url = f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as m:
        _signal_at(28, m)
        res = hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url)
    assert res.returncode == 143 and "Traceback" not in res.stderr, res.stderr
    stopped, waiting = _study(url).trials
    assert stopped.state.name == "FAIL" and stopped.user_attrs["status"] == "failed: interrupted"
    assert stopped.user_attrs[record.STOPPED_FOR_RETRY] == 1 and waiting.state.name == "WAITING"
    pointer = json.loads(stopped.system_attrs[record.CHECKPOINT])
    assert pointer["step"] == 29 and pointer["trial"] == 0  # saved at the step boundary after the signal
    assert len(_artifacts(tmp_path, "s")) == 1  # one checkpoint: the newest of the stopped trial
    assert waiting.intermediate_values == stopped.intermediate_values and len(waiting.intermediate_values) == 4

    hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url, check=True)
    stopped, continued = _study(url).trials
    assert continued.state.name == "COMPLETE" and continued.params == reference.params
    assert continued.value == pytest.approx(reference.value, abs=1e-6)
    assert continued.intermediate_values == pytest.approx(reference.intermediate_values, abs=1e-6)  # one curve
    assert continued.user_attrs["val_eval_loss"] == pytest.approx(reference.user_attrs["val_eval_loss"], abs=1e-6)
    resumed = continued.user_attrs[record.RESUMED_FROM]
    assert resumed["trial"] == 0 and resumed["step"] == 29 and continued.user_attrs["steps"] == 48
    assert continued.user_attrs[record.RETRY_OF] == 0
    assert _artifacts(tmp_path, "s") == []  # the trial ended: its checkpoint (and the inherited one) removed


def test_checkpoints_off_a_stopped_trial_still_keeps_its_config(make_space, hpsearch, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    space, url = str(_space(make_space)), f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as m:
        _signal_at(10, m, signal.SIGINT)
        res = hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url,
                       "--checkpoint-every-s", "0")
    assert res.returncode == 130
    assert not (tmp_path / "s-artifacts").exists()
    hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url, "--checkpoint-every-s", "0",
             check=True)
    stopped, again = _study(url).trials
    assert again.state.name == "COMPLETE" and again.params == stopped.params
    assert record.RESUMED_FROM not in again.user_attrs and again.user_attrs["steps"] == 48  # from step 0


def test_a_store_that_fails_keeps_the_checkpoint_before_and_says_why(make_space, hpsearch, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk from the second checkpoint on: training goes on, the trial records why, and the checkpoint
    before stays named; a signal's save fails too, and the retry continues from that first checkpoint."""
    import errno

    store = optuna.artifacts.FileSystemArtifactStore
    real, writes = store.write, []

    def write(self, artifact_id, content_body) -> None:
        writes.append(artifact_id)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, artifact_id, content_body)

    space, url = str(_space(make_space)), f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as m:
        m.setattr(store, "write", write)
        _signal_at(28, m)
        res = hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url)
    assert res.returncode == 143 and "checkpoint not written (step 12: No space left on device)" in res.stderr
    stopped, _ = _study(url).trials
    assert stopped.user_attrs[record.CHECKPOINT_ERROR] == "step 29: No space left on device"
    assert json.loads(stopped.system_attrs[record.CHECKPOINT])["step"] == 6  # the first, whole
    assert len(_artifacts(tmp_path, "s")) == 1
    hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url, check=True)
    assert _study(url).trials[1].user_attrs[record.RESUMED_FROM]["step"] == 6


def test_a_retry_is_not_stale_for_the_heartbeat_it_inherited(tmp_path: Path) -> None:
    """Optuna's retry copies every system attribute of the dead trial, its last heartbeat too: the retry, asked
    a moment ago, must not be failed for it before its own first beat (it is loading its model)."""
    import time

    from hpsearch.study.liveness import HEARTBEAT_ATTR, Liveness
    from hpsearch.study.storage import open_storage

    url = f"journal:////{str(tmp_path).lstrip('/')}/j.log"
    study = optuna.create_study(study_name="tiny", storage=open_storage(url))
    dead = study.ask()
    study._storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 1000)
    time.sleep(2.2)  # its start too is past the grace period
    liveness = Liveness(interval=1, grace_period=2, max_retry=2)
    assert liveness.fail_stale(study, force=True) == [0]
    retry = study.ask()  # another worker takes the retry now
    inherited = study._storage.get_trial(retry._trial_id).system_attrs[HEARTBEAT_ATTR]
    assert retry.number == 1 and inherited < time.time() - 900  # the parent's beat
    assert liveness.fail_stale(study, force=True) == []  # started a moment ago: alive
    assert study._storage.get_trial(retry._trial_id).state.name == "RUNNING"


def test_a_save_cut_short_names_nothing_new(tmp_path: Path) -> None:
    """A second signal (or any error) in the middle of writing a checkpoint: nothing half-written is stored or
    named, and the checkpoint before stays the trial's."""
    from hpsearch.study.artifacts import open_store
    from hpsearch.study.durable import Durable

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    trial = study.ask()
    location = str(tmp_path / "store")
    checkpoints = Durable(open_store(location), location, 60).for_trial(trial)
    checkpoints.save(lambda path: path.write_bytes(b"first"), {"step": 1, "report": 0, "epochs": 0.1, "of_steps": 9})

    def cut_short(path: Path) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(cut_short, {"step": 2, "report": 0, "epochs": 0.2, "of_steps": 9})
    pointer = json.loads(study._storage.get_trial(trial._trial_id).system_attrs[record.CHECKPOINT])
    assert pointer["step"] == 1
    stored = [p for p in Path(location).rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [b"first"]


def test_the_trials_table_and_the_report_show_a_continued_trial_as_one(make_space, hpsearch, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    space, url = str(_space(make_space)), f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as m:
        _signal_at(8, m)
        hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url)
    hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url, check=True)
    listed = hpsearch("trials", "--study", "tiny", "--storage", url, check=True).stdout
    rows = [line for line in listed.splitlines() if line.strip("│ ").startswith(("0 ", "1 "))]
    assert len(rows) == 1 and "COMPLETE" in rows[0] and "#0@9" in rows[0], listed
    hpsearch("report", "--study", "tiny", "--storage", url, "--output", "r.html", check=True)
    assert "1 (resumed #0@9)" in (tmp_path / "r.html").read_text()


def test_a_fork_is_a_new_trial_continuing_another_s_checkpoint(make_space, hpsearch, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The internal ground of population-based training: trial 0, stopped with its checkpoint, forked with another
    learning rate; the fork runs as any waiting trial does, from trial 0's step, and owns its copy."""
    from hpsearch.study.durable import fork

    space, url = str(_space(make_space)), f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as m:
        _signal_at(8, m)
        hpsearch("run", "--space", space, "--trials", "1", "--quiet", "--storage", url)
    study = _study(url)
    source = study.trials[0]
    with pytest.raises(ValueError, match="fixed here"):
        fork(study, source, {"weight_decay": 0.1})  # weight decay is fixed in this space
    number = fork(study, source, {"learning_rate": 3e-3})
    assert number == 2 and len(_artifacts(tmp_path, "s")) == 2  # the source's, and the fork's copy
    hpsearch("run", "--space", space, "--trials", "2", "--quiet", "--storage", url, check=True)
    _, continued, forked = _study(url).trials
    assert forked.params == {"learning_rate": 3e-3, "dropout": 0.1} and forked.state.name == "COMPLETE"
    assert forked.user_attrs[record.RESUMED_FROM]["trial"] == 0 and forked.user_attrs["steps"] == 48
    assert continued.user_attrs[record.RESUMED_FROM]["step"] == forked.user_attrs[record.RESUMED_FROM]["step"] == 9
    assert forked.user_attrs["val_eval_loss"] != continued.user_attrs["val_eval_loss"]  # it trained at its own rate
    assert _artifacts(tmp_path, "s") == []

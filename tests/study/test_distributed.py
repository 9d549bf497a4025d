"""A trial across several devices (``--gpus-per-trial 2``), here as two gloo processes on the CPU: the same trial
value as one process with the same global batch, a pruned trial stops both ranks at one step, an interrupt leaves
no rank behind and no trial RUNNING (rank 0 saved it for its continuation), and a killed rank fails the trial for a
retry and frees the others."""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.config.options import RunOptions
from hpsearch.config.placement import place_groups
from hpsearch.study import record
from tests.helpers import start_cli

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_available(), reason="no torch.distributed")

VALUE_TOLERANCE = 1e-4
"""How far a 2-rank trial's validation loss may be from one process's: the same update up to float summation order
(each rank sums its half of the batch; measured: about 5e-6)."""


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).trials


def test_two_ranks_train_as_one_process_and_a_pruned_trial_stops_both_at_one_step(make_space, hpsearch,
                                                                                  tmp_path: Path) -> None:
    """Dropout off, 33 training rows in batches of 16 (the last batch has one row, fewer than the ranks), 4 epochs,
    the validation loss the metric. Trial 0 (lr 1e-7) barely moves; trial 1 (lr 3e-3) ends its first report worse,
    and a percentile pruner prunes it there. Two ranks give the trials one process gives; rank 1 ends each trial at
    the step rank 0 recorded, then trains no more."""
    space = str(make_space(study__metric="eval_loss", study__pruner={"name": "percentile", "options": {
        "percentile": 99.0, "n_startup_trials": 1, "n_warmup_steps": 0}},
        study__enqueue=[{"learning_rate": 1e-7, "dropout": 0.0}, {"learning_rate": 3e-3, "dropout": 0.0}],
        params__learning_rate={"type": "float", "low": 1e-7, "high": 3e-3, "log": True},
        params__dropout={"type": "float", "low": 0.0, "high": 0.0}, data__max_train_samples=33, fixed__epochs=4))
    one, two = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    hpsearch("run", "--space", space, "--trials", "2", "--device", "cpu", "--storage", one, check=True)
    res = hpsearch("run", "--space", space, "--trials", "2", "--device", "cpu", "--gpus-per-trial", "2",
                   "--storage", two, check=True)
    assert "rank 0 of 2 in group 0" in res.stderr and "rank 1 of 2 in group 0" in res.stderr
    (done, pruned), (done2, pruned2) = _trials(one), _trials(two)
    assert [t.state.name for t in (done, pruned, done2, pruned2)] == ["COMPLETE", "PRUNED"] * 2
    assert done.params == done2.params and pruned.params == pruned2.params
    assert done.user_attrs["steps"] == done2.user_attrs["steps"] == 12  # 3 steps x 4 epochs
    assert pruned2.user_attrs[record.PRUNED_AT_REPORT] == pruned.user_attrs[record.PRUNED_AT_REPORT] < 8
    for a, b in ((done, done2), (pruned, pruned2)):  # the same updates, up to float summation order
        assert list(b.intermediate_values) == list(a.intermediate_values)
        assert list(b.intermediate_values.values()) == pytest.approx(list(a.intermediate_values.values()),
                                                                     abs=VALUE_TOLERANCE)
    ends = [int(s) for s in re.findall(r"rank 1: trial ended at step (\d+)", res.stderr)]
    assert ends == [12, pruned2.user_attrs["steps"]] and ends[1] < ends[0]


def test_a_sharded_trial_fsdp_trains_as_one_process(make_space, hpsearch, tmp_path: Path) -> None:
    """model.distributed: fsdp shards the model over the two ranks; every rank evaluates (each forward gathers the
    shards), rank 0 alone reports; the trial's value matches one process's."""
    space = str(make_space(study__pruner={"name": "none"}, study__sampler={"name": "random", "seed": 3},
                           data__max_train_samples=40, model__distributed="fsdp",
                           params__dropout={"type": "float", "low": 0.0, "high": 0.0}))
    one, two = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    hpsearch("run", "--space", space, "--trials", "1", "--device", "cpu", "--storage", one,
             "--set", "model.distributed=ddp", check=True)  # one process holds the whole model
    refused = hpsearch("run", "--space", space, "--trials", "1", "--device", "cpu", "--gpus-per-trial", "2",
                       "--storage", two)
    assert refused.returncode == 2 and "a sharded trial is not checkpointed" in refused.stderr
    res = hpsearch("run", "--space", space, "--trials", "1", "--device", "cpu", "--gpus-per-trial", "2",
                   "--storage", two, "--checkpoint-every-s", "0", check=True)
    assert "rank 1: trial ended at step 6" in res.stderr
    (a,), (b,) = _trials(one), _trials(two)
    assert a.params == b.params and b.state.name == "COMPLETE"
    assert b.user_attrs[record.val("eval_loss")] == pytest.approx(a.user_attrs[record.val("eval_loss")],
                                                                   abs=VALUE_TOLERANCE)
    refused = hpsearch("run", "--space", space, "--trials", "1", "--device", "cpu", "--gpus-per-trial", "2",
                       "--keep-best", "--storage", two)
    assert refused.returncode != 0 and "--keep-best with model.distributed: fsdp" in refused.stderr


def _start_group(make_space, tmp_path: Path, url: str) -> tuple[subprocess.Popen, list[int]]:
    """A 2-rank run of one long trial; returns the launcher and its ranks' pids once the trial trains."""
    space = str(make_space("slow.yaml", fixed__epochs=400))
    launcher = start_cli(["run", "--space", space, "--trials", "1", "--device", "cpu", "--gpus-per-trial", "2",
                          "--storage", url, "--quiet"], tmp_path)
    pids: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = launcher.stderr.readline()
        pids += [int(p) for p in re.findall(r"worker w\d started \(pid (\d+)", line)]
        if "trial 0 started" in line:
            break
    assert len(pids) == 2
    time.sleep(2.0)  # well into the trial's steps
    return launcher, pids


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_an_interrupted_launcher_leaves_no_rank_and_no_running_trial(make_space, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/i.db"
    launcher, pids = _start_group(make_space, tmp_path, url)
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    assert all(_gone(p) for p in pids)
    trial, continuation = _trials(url)
    assert trial.state.name == "FAIL" and trial.user_attrs[record.STATUS] == "failed: interrupted"
    assert continuation.state.name == "WAITING" and record.CHECKPOINT in continuation.system_attrs  # rank 0 saved


def test_a_killed_rank_fails_the_trial_and_frees_the_other(make_space, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    launcher, pids = _start_group(make_space, tmp_path, url)
    subprocess.run(["kill", "-KILL", str(pids[1])], check=True)
    _, err = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    assert all(_gone(p) for p in pids)
    trial, continuation = _trials(url)
    assert trial.state.name == "FAIL" and "process group" in trial.user_attrs[record.STATUS], err
    assert continuation.state.name == "WAITING" and continuation.params == trial.params


def test_ranks_are_placed_on_consecutive_gpus_with_torchrun_variables() -> None:
    slots = place_groups(None, ["0", "1", "2", "3", "4"], 2)  # the fifth GPU makes no group
    assert [(s.gpu, s.group, s.rank, s.world) for s in slots] == [
        ("0,1", 0, 0, 2), ("0,1", 0, 1, 2), ("2,3", 1, 0, 2), ("2,3", 1, 1, 2)]
    env = slots[3].env({}, master_port=29611)
    assert {k: env[k] for k in ("CUDA_VISIBLE_DEVICES", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")} == {
        "CUDA_VISIBLE_DEVICES": "2,3", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29611"}
    assert "RANK" not in place_groups(None, ["0"], 1)[0].env({"RANK": "3"})  # no group: no rank
    assert [s.gpu for s in place_groups(2, [], 2)] == [None] * 4  # the CPU: 2 groups of 2 processes
    assert RunOptions(trials=1, gpus_per_trial=2).local_workers and not RunOptions(trials=1).local_workers

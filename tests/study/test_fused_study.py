"""Fused studies through the CLI (``run --fuse K``): each member an ordinary trial of the study, the group kept full
to the total, the same values as trials run one at a time, Ctrl-C and resume, and the combinations refused."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
import torch

from tests.helpers import saved, start_cli

CONFIGS = [{"learning_rate": lr, "batch_size": bs, "lora_r": r}
           for lr, bs, r in ((2e-3, 16, 0), (1e-3, 8, 4), (3e-3, 32, 0), (5e-4, 16, 8), (2e-3, 8, 0))]


def _space(make_space, epochs: int | None = 2, **kw):
    """Learning rate, batch size and LoRA rank (0: full fine-tuning) searched; ``epochs`` None: searched too."""
    params = {"learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
              "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
              "lora_r": {"type": "categorical", "choices": [0, 4, 8]}}
    if epochs is None:
        params["epochs"] = {"type": "categorical", "choices": [1, 3]}
    return make_space(params=params, fixed={"seed": 0, "dropout": 0.0, **({"epochs": epochs} if epochs else {})},
                      **kw)


def _study(tmp_path: Path, name: str = "tiny", db: str = "studies.db") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/{db}")


def test_a_fused_study_is_the_same_study_as_one_run_a_trial_at_a_time(make_space, hpsearch, tmp_path: Path) -> None:
    """The same enqueued configs, fused three at a time and one at a time: the same values and reports, each trial
    ordinary (params, state, attributes) besides the group it trained in, and the export as ever."""
    space = _space(make_space, study__pruner="none", study__enqueue=CONFIGS)
    hpsearch("run", "--space", str(space), "--trials", "5", "--quiet", "--storage", f"sqlite:///{tmp_path}/a.db",
             check=True)
    res = hpsearch("run", "--space", str(space), "--trials", "5", "--quiet", "--fuse", "3", "--storage",
                   f"sqlite:///{tmp_path}/f.db", check=True)
    alone, fused = _study(tmp_path, db="a.db"), _study(tmp_path, db="f.db")
    by_params = {tuple(sorted(t.params.items())): t for t in alone.trials}
    assert len(fused.trials) == 5 and {t.state.name for t in fused.trials} == {"COMPLETE"}, res.stderr
    for t in fused.trials:
        a = by_params[tuple(sorted(t.params.items()))]
        assert t.value == pytest.approx(a.value, abs=1e-9)
        assert t.intermediate_values == pytest.approx(a.intermediate_values, rel=1e-3, abs=1e-4)
        # Rounding (products batched with other members' rows) grows over 48 steps of a fast-learning trial: 2e-4.
        assert t.user_attrs["val_eval_loss"] == pytest.approx(a.user_attrs["val_eval_loss"], rel=1e-3)
        assert set(a.user_attrs) <= set(t.user_attrs)
    groups = {t.user_attrs["fused_group"] for t in fused.trials}
    assert len(groups) == 1 and "fused_group" not in alone.trials[0].user_attrs
    assert hpsearch("export", "--study", "tiny", "--storage", f"sqlite:///{tmp_path}/f.db", "--output",
                    "best.yaml").returncode == 0


def test_the_group_stays_full_until_the_total(make_space, hpsearch, tmp_path: Path) -> None:
    """Members leave as they finish or are pruned and new trials join at once: the study reaches its total with
    at most K trials running at a time, some of them together."""
    space = _space(make_space)
    hpsearch("run", "--space", str(space), "--total", "7", "--quiet", "--fuse", "3", check=True)
    trials = _study(tmp_path).trials
    assert len(trials) == 7 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    most = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert 2 <= most <= 3, spans


def test_ctrl_c_saves_every_running_member_and_the_same_command_continues_them(make_space, hpsearch,
                                                                               tmp_path: Path) -> None:
    """Each member saves at its next step and fails for a retry (exit 130: the signal reaches a real worker
    process); the same command (here in this process) continues all three, each from its checkpoint, in a group
    again, and completes the total."""
    from hpsearch.study.storage import open_storage

    space = _space(make_space, epochs=4, study__pruner="none")
    args = ["run", "--space", str(space), "--total", "4", "--quiet", "--fuse", "3"]
    proc = start_cli(args, tmp_path)
    deadline, started = time.monotonic() + 120, 0
    while time.monotonic() < deadline and started < 3:
        started += " started:" in proc.stderr.readline()
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db", read_only=True)
    while time.monotonic() < deadline and not saved(storage, "tiny", trials=3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3 + ["WAITING"] * 3, [t.user_attrs for t in trials]
    assert {t.user_attrs["status"] for t in trials[:3]} == {"failed: interrupted"}
    hpsearch(*args, check=True)
    trials = _study(tmp_path).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states and "WAITING" not in states
    continued = [t for t in trials if "resumed_from" in t.user_attrs]
    assert sorted(t.user_attrs["resumed_from"]["trial"] for t in continued) == [0, 1, 2]
    assert all(t.user_attrs["steps"] == t.user_attrs["resumed_from"]["of_steps"] for t in continued)
    assert len({t.user_attrs["fused_group"] for t in continued}) == 1  # they trained in a group again


def test_kept_lora_members_export_and_leave_the_shared_base_as_it_was(make_space, hpsearch, tmp_path: Path,
                                                                     tiny_model: Path) -> None:
    """A kept LoRA member is merged from a private copy: the base the group shares (this process's copy of the
    checkpoint, the CLI running in this process) is the checkpoint still, and the kept model exports."""
    from safetensors.torch import load_file

    from hpsearch.finetune import model as M

    space = _space(make_space, epochs=None, study__pruner="none",
                   study__enqueue=[{**CONFIGS[1], "epochs": 1}, {**CONFIGS[3], "epochs": 3}])
    hpsearch("run", "--space", str(space), "--trials", "2", "--quiet", "--fuse", "2", "--keep-best", "2", check=True)
    assert [t.user_attrs["model_kept"] for t in _study(tmp_path).trials] == [True, True]
    checkpoint = load_file(tiny_model / "model.safetensors")
    copies = [w for key, w in M._WEIGHTS.items() if key[0] == str(tiny_model)]  # one per head the suite built
    assert copies
    compared = 0
    for shared in copies:
        for name, tensor in shared.items():
            if name.removeprefix("bert.") in checkpoint:
                assert torch.equal(tensor, checkpoint[name.removeprefix("bert.")]), name
                compared += 1
    assert compared >= len(checkpoint) - 2  # every body weight (the pooler may be a head's)
    res = hpsearch("export", "--study", "tiny", "--output", "best.yaml", "--model", "best-model")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "best-model" / "model.safetensors").exists()


def test_fusing_with_process_groups_is_refused(make_space, hpsearch, tmp_path: Path) -> None:
    res = hpsearch("run", "--space", str(_space(make_space)), "--trials", "2", "--fuse", "2", "--gpus-per-trial", "2",
                   "--device", "cpu")
    assert res.returncode == 2 and "--fuse 2 with --gpus-per-trial" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "studies.db").exists()


@pytest.mark.parametrize("override, says", [
    ({"model__cuda_graphs": True}, "--fuse 2 with model.cuda_graphs"),
    ({"study__deterministic": True}, "--fuse 2 with study.deterministic"),
])
def test_what_fusing_refuses_in_a_space(make_space, hpsearch, tmp_path: Path, override: dict, says: str) -> None:
    res = hpsearch("run", "--space", str(_space(make_space, **override)), "--trials", "2", "--fuse", "2")
    assert res.returncode == 2 and says in res.stderr, res.stderr
    assert not (tmp_path / "studies.db").exists()


@pytest.mark.parametrize("override, says", [
    ({"study__metrics": ["accuracy", "train_time_s"], "study__pruner": "none"}, "train_time_s in study.metrics"),
    ({"study__constraints": ["peak_memory_mb <= 4000"]}, "peak_memory_mb in study.constraints"),
])
def test_a_group_s_shared_measurements_are_refused(make_space, hpsearch, tmp_path: Path, override: dict,
                                                   says: str) -> None:
    """Times, throughput and memory of a fused member are its group's (the measurement table says which)."""
    res = hpsearch("run", "--space", str(_space(make_space, **override)), "--trials", "2", "--fuse", "2")
    assert res.returncode == 2 and f"--fuse 2 with {says}" in res.stderr, res.stderr
    assert not (tmp_path / "studies.db").exists()


def test_a_grid_fused_three_at_a_time_runs_each_point_once(make_space, hpsearch, tmp_path: Path) -> None:
    """Members ask one at a time, and a grid sampler skips the points running members hold."""
    space = make_space(params={"learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3, 3e-3]},
                               "batch_size": {"type": "categorical", "choices": [8, 16]}},
                       fixed={"seed": 0, "dropout": 0.0, "epochs": 1}, study__sampler={"name": "grid"},
                       study__pruner="none")
    hpsearch("run", "--space", str(space), "--trials", "6", "--quiet", "--fuse", "3", check=True)
    trials = _study(tmp_path).trials
    assert sorted((t.params["learning_rate"], t.params["batch_size"]) for t in trials) == sorted(
        (lr, bs) for lr in (1e-3, 2e-3, 3e-3) for bs in (8, 16))
    assert {t.state.name for t in trials} == {"COMPLETE"}


def test_fused_members_with_two_objectives_and_confirmed_bests(make_space, hpsearch, tmp_path: Path) -> None:
    """Several objectives, and study.confirm's folds (run after the study, each trial alone), with --fuse."""
    two = _space(make_space, epochs=1, study__metrics=["accuracy", "trainable_parameters"], study__pruner="none")
    hpsearch("run", "--space", str(two), "--trials", "3", "--quiet", "--fuse", "3", check=True)
    assert all(len(t.values) == 2 for t in _study(tmp_path).trials)
    confirmed = _space(make_space, epochs=1, study__name="confirmed", study__pruner="none",
                       study__confirm={"top_k": 2, "folds": 2})
    hpsearch("run", "--space", str(confirmed), "--trials", "3", "--quiet", "--fuse", "3", check=True)
    from hpsearch.study.record import confirmations

    assert len(confirmations(_study(tmp_path, "confirmed"))) == 2


def test_two_workers_fuse_their_own_groups_to_the_total(make_space, hpsearch, tmp_path: Path) -> None:
    """--workers N with --fuse K: N processes, each a fused group (on GPUs, --trials-per-gpu places them alike)."""
    hpsearch("run", "--space", str(_space(make_space, epochs=1)), "--total", "6", "--workers", "2", "--fuse", "2",
             "--quiet", check=True)
    trials = _study(tmp_path).trials
    assert len(trials) == 6 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    groups = {t.user_attrs["fused_group"] for t in trials}
    assert len(groups) == 2 and len({g.split("/")[0] for g in groups}) == 2  # two processes, a group each


def test_a_member_s_error_that_stops_the_worker_is_each_sibling_s_recorded_reason(
        make_space, hpsearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one member (not its trial's failure) stops the worker; the members beside it stop at their next
    step and record why (not "interrupted": nobody pressed Ctrl-C)."""
    from hpsearch.study.objective import _Reporter

    real = _Reporter.on_evaluate

    def on_evaluate(self, state, metrics) -> None:
        if self.trial.number == 0:
            raise ValueError("a bug in trial 0's report")
        real(self, state, metrics)

    monkeypatch.setattr(_Reporter, "on_evaluate", on_evaluate)
    with pytest.raises(ValueError, match="a bug in trial 0"):
        hpsearch("run", "--space", str(_space(make_space, epochs=3, study__pruner="none")), "--trials", "2",
                 "--quiet", "--fuse", "2")
    trials = {t.number: t for t in _study(tmp_path).trials}
    assert trials[0].state.name == "FAIL" and trials[1].state.name == "FAIL"
    assert trials[1].user_attrs["status"] == "failed: stopped with its fused group: ValueError: a bug in trial 0's " \
                                             "report"

"""The run's options, written once: each is checked the same way from Python and from the command line, the CLI's
flags and the API's keyword arguments are derived from it, and a worker gets the ones marked for workers; how they
go together is a rule of the run (:mod:`hpsearch.config.rules`), named the way the caller names options."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import hpsearch
from hpsearch.config.options import RunOptions, flag_names, run_keywords
from hpsearch.config.rules import option_combination_problems
from hpsearch.errors import UsageError


def test_every_option_is_a_flag_of_run_and_a_keyword_of_the_api() -> None:
    from click.testing import CliRunner

    from hpsearch.cli import cli

    help_text = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).stdout
    keywords = inspect.signature(hpsearch.run).parameters
    for name, spec in RunOptions.fields():
        assert spec.flag in help_text, spec.flag
        assert keywords[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert keywords[name].default == RunOptions.__dataclass_fields__[name].default


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": 0}, "trials: must be an integer >= 1, got 0"),
    ({"trials": True}, "trials: must be an integer"),
    ({"trials": 1, "timeout": 0.5}, "timeout: must be a number >= 1, got 0.5"),
    ({"trials": 1, "max_retry": -1}, "max_retry: must be an integer >= 0"),
    ({"trials": 1, "trials_per_gpu": 0}, "trials_per_gpu: must be an integer >= 1, got 0"),
    ({"trials": 1, "device": "gpu"}, "device: must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"trials": 1, "device": "cuda:x"}, "device: must be auto, cpu, cuda or cuda:N"),
    ({"trials": 1, "gpus": "0,1"}, "gpus: must be a list"),
])
def test_a_bad_option_is_named_with_its_value(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        RunOptions(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give trials=N"),
    ({"trials": 1, "workers": 4, "trials_per_gpu": 2}, "workers 4 and trials_per_gpu 2: give one"),
    ({"trials": 1, "trials_per_gpu": 2, "device": "cpu"}, "device cpu: trials_per_gpu place workers on GPUs"),
    ({"trials": 1, "gpus": ["0"], "device": "cpu"}, "device cpu: gpus place workers on GPUs"),
    ({"trials": 1, "trials_per_gpu": 2, "device": "cuda:0"}, "device cuda:0: with trials_per_gpu each worker"),
    ({"trials": 1, "heartbeat_interval": 10, "grace_period": 5}, "grace_period 5: must be longer than"),
    ({"trials": 1, "gpus": ["0", "1"], "device": "cuda:1"}, "device cuda:1: with gpus each worker sees its own GPU"),
    ({"trials": 1, "gpus_per_trial": 2, "trials_per_gpu": 2}, "give one (several trials per GPU, or several GPUs"),
])
def test_options_that_do_not_go_together_are_named(kwargs: dict, message: str) -> None:
    problems = [p.text for p in option_combination_problems(RunOptions(**kwargs))]
    assert any(message in p for p in problems), problems


def test_the_command_line_names_flags_where_python_names_keywords() -> None:
    options = RunOptions(heartbeat_interval=10, grace_period=5)
    with flag_names():
        assert [p.text for p in option_combination_problems(options)] == [
            "give --trials N (trials in this invocation) or --total N (finished trials in the study)",
            "--grace-period 5: must be longer than --heartbeat-interval 10"]
    assert option_combination_problems(options)[1].text == "grace_period 5: must be longer than heartbeat_interval 10"


def test_a_gpu_number_is_a_device_the_cli_the_api_and_workers_take(make_space, hpsearch) -> None:
    assert RunOptions(trials=1, device="cuda:1").for_worker(total=2).device == "cuda:1"
    bad = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--device", "cuda:one")
    assert bad.returncode == 2 and "--device" in bad.stderr and "cuda:N" in bad.stderr
    if torch.cuda.device_count() < 2:  # parsed; the machine then says the GPU is not there
        res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--device", "cuda:1")
        assert res.returncode == 1 and "--device cuda:1:" in res.stderr and "Traceback" not in res.stderr
        assert not (Path.cwd() / "studies.db").exists()


def test_an_unknown_keyword_is_refused_with_a_hint() -> None:
    with pytest.raises(UsageError, match="keep_bset .did you mean keep_best.."):
        run_keywords({"trials": 1, "keep_bset": 2})


def test_workers_get_the_options_marked_for_them() -> None:
    options = RunOptions(trials=3, total=9, workers=2, device="cpu", timeout=60, keep_best=2, artifacts="a",
                         warm_start="old", mlflow="file:m", storage="sqlite:///x.db", quiet=False, study_name="s")
    worker = options.for_worker(total=12)
    assert worker == RunOptions(total=12, device="cpu", timeout=60, keep_best=2, artifacts="a", mlflow="file:m",
                                storage="sqlite:///x.db", study_name="s", quiet=True)
    assert RunOptions(**worker.as_dict()) == worker  # what a worker process reads back
    assert options.local_workers
    assert RunOptions(trials=1, gpus=[" 0", "1 ", ""]).gpus == ("0", "1")
    assert RunOptions(trials=1, gpus=["0"]).local_workers  # one listed GPU still pins a worker to it
    assert RunOptions(trials=1, trials_per_gpu=1).local_workers
    assert not RunOptions(trials=1, workers=1).local_workers

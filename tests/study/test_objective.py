"""Faults inside a trial, on real storage (SQLite file and PostgreSQL): OOM, NaN, Ctrl-C / SIGTERM."""
from __future__ import annotations

import gc
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch

from hpsearch.config.load import load_space
from hpsearch.config.options import RunOptions
from hpsearch.finetune import model
from hpsearch.study import runner
from hpsearch.study.progress import Progress
from hpsearch.tasks.classification import SequenceClassification


def test_out_of_memory_fails_the_trial_frees_the_model_and_goes_on(storage_url: str, make_space, study_name: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    models: list[weakref.ref] = []
    real_build, real_loss = model.build_model, SequenceClassification.loss
    calls = {"n": 0}

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    def loss(self, logits, labels):
        calls["n"] += 1
        if len(models) == 1:  # the first trial runs out of memory at its third step
            if calls["n"] == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_loss(self, logits, labels)

    monkeypatch.setattr("hpsearch.finetune.recipe.build_model", build)
    monkeypatch.setattr(SequenceClassification, "loss", loss)
    options = RunOptions(storage=storage_url, trials=2, study_name=study_name)
    study = runner.run_study(load_space(make_space(fixed__epochs=1)), options, progress=Progress())
    first, second = study.trials
    assert first.state.name == "FAIL" and "out of memory" in first.user_attrs["fail_reason"]
    assert first.user_attrs["status"] == "failed: out of memory" and first.user_attrs["steps"] == 2
    assert second.state.name == "COMPLETE"
    gc.collect()
    assert models[0]() is None  # the failed trial's model was released


def test_non_finite_loss_never_completes(storage_url: str, make_space, study_name: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = SequenceClassification.loss
    monkeypatch.setattr(SequenceClassification, "loss", lambda self, lg, lb: real(self, lg, lb) * float("nan"))
    options = RunOptions(storage=storage_url, trials=2, study_name=study_name)
    study = runner.run_study(load_space(make_space(fixed__epochs=1)), options, progress=Progress())
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["fail_reason"].startswith("non-finite loss") for t in study.trials)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_the_trial_failed_and_resume_works(storage_url: str, make_space, tmp_path: Path,
                                                           study_name: str, sig: int, code: int) -> None:
    slow = make_space("slow.yaml", fixed__epochs=300)
    cmd = [sys.executable, "-m", "hpsearch", "run", "--space", str(slow), "--trials", "5", "--quiet",
           "--storage", storage_url, "--study-name", study_name]
    # A suite started in the background (`cmd &`) inherits SIGINT ignored, and so would the worker: restore it,
    # as a worker started from a terminal has it.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "trial 0 started" not in proc.stderr.readline():
        pass
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code, proc.stderr.read()[-3000:]
    assert time.monotonic() - t0 < 15  # promptly
    trials = optuna.load_study(study_name=study_name, storage=storage_url).trials
    assert [t.state.name for t in trials] == ["FAIL"] and trials[0].user_attrs["status"] == "failed: interrupted"
    resumed = subprocess.run(cmd[:-4] + ["--set", "fixed.epochs=1", "--storage", storage_url, "--study-name",
                                         study_name], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert len(optuna.load_study(study_name=study_name, storage=storage_url).trials) == 6

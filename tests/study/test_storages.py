"""Storages past one database: the journal on a file and on Redis, the gRPC proxy in front of a database, and MLflow
tracking. Real workers (processes) on the real Redis of this machine and a real proxy on loopback."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.errors import HpsearchError, UsageError
from hpsearch.study import storage as S
from hpsearch.study.liveness import HEARTBEAT_ATTR, Liveness
from tests.helpers import default_signals, finish, kill_a_worker_mid_trial, start_cli


def journal(path: Path) -> str:
    """The journal URL of an absolute path (four slashes, as SQLite URLs)."""
    return f"journal:////{str(path).lstrip('/')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def grpc_url(tmp_path: Path):
    """`hpsearch storage-proxy` serving a fresh SQLite file on a free loopback port."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "storage-proxy", "--storage",
                             f"sqlite:///{tmp_path}/behind-proxy.db", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    yield f"grpc://127.0.0.1:{port}"
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(params=["journal", "redis", "grpc"])
def other_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return journal(tmp_path / "studies.log")
    return request.getfixturevalue(f"{request.param}_url")


def test_urls_name_the_storage_kind_and_journal_paths_read_as_sqlite_paths(tmp_path: Path) -> None:
    assert [S.storage_kind(u) for u in ("sqlite:///a.db", "postgresql://h/db", "redis://h:6379/0",
                                        "rediss://h/0", "journal:///a.log", "grpc://h:1")] == \
        ["rdb", "rdb", "redis", "redis", "journal", "grpc"]
    assert S.journal_path("journal:///studies.log") == "studies.log"
    assert S.journal_path("journal:////abs/dir/studies.log") == "/abs/dir/studies.log"
    assert S.grpc_address("grpc://10.0.0.5:13000") == ("10.0.0.5", 13000)
    with pytest.raises(HpsearchError, match="expected grpc://HOST:PORT"):
        S.grpc_address("grpc://proxy")
    assert S.redact("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"


def test_unreachable_servers_are_one_clear_error_without_the_password(monkeypatch) -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(HpsearchError, match=f"cannot open storage redis://:\\*\\*\\*@127.0.0.1:{port}/0") as err:
        S.open_storage(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in str(err.value)
    monkeypatch.setattr(S, "GRPC_CONNECT_TIMEOUT", 1)
    with pytest.raises(HpsearchError, match=f"cannot open storage grpc://127.0.0.1:{port}"):
        S.open_storage(f"grpc://127.0.0.1:{port}")
    with pytest.raises(UsageError, match="not another proxy"):
        S.serve_proxy(f"grpc://127.0.0.1:{port}")


def test_n_workers_by_m_trials_share_the_study(other_storage: str, make_space, hpsearch, tmp_path: Path,
                                               study_name: str) -> None:
    """Two `hpsearch run` processes started together: exactly 2 trials, numbered without gaps or repeats; then the
    read-only commands work on the same storage (many workers asking at once: tests/study/test_budget.py)."""
    space = str(make_space(fixed__epochs=1))
    n, m = 2, 1
    procs = [start_cli(["run", "--space", space, "--trials", str(m), "--quiet", "--storage", other_storage,
                     "--study-name", study_name], tmp_path) for _ in range(n)]
    finish(procs)
    study = optuna.load_study(study_name=study_name, storage=S.open_storage(other_storage, read_only=True))
    assert sorted(t.number for t in study.trials) == list(range(n * m))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert all(HEARTBEAT_ATTR in t.system_attrs for t in study.trials)  # hpsearch's heartbeats were written
    listing = hpsearch("trials", "--study", study_name, "--storage", other_storage, check=True)
    assert listing.stdout.count("COMPLETE") + listing.stdout.count("PRUNED") >= n * m


def test_a_killed_worker_s_trial_on_the_journal_is_failed_and_retried(make_space, hpsearch, tmp_path: Path,
                                                                     study_name: str) -> None:
    url = journal(tmp_path / "killed.log")
    retry = kill_a_worker_mid_trial(url, make_space, tmp_path, study_name, hpsearch)
    assert HEARTBEAT_ATTR in retry.system_attrs  # hpsearch's heartbeats: the journal has none of Optuna's


def test_stale_trials_are_failed_once_when_two_workers_notice_together(tmp_path: Path) -> None:
    """Two storages on one journal (two workers) both see a silent trial: one FAIL, one retry."""
    url = journal(tmp_path / "race.log")
    first = optuna.create_study(study_name="race", storage=S.open_storage(url))
    trial = first.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    first._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 100)
    second = optuna.load_study(study_name="race", storage=S.open_storage(url))
    live = Liveness(interval=1, grace_period=2, max_retry=2)
    time.sleep(2.1)  # its start, too, is past the grace period
    assert live.fail_stale(first) + live.fail_stale(second, force=True) == [trial.number]
    assert live.fail_stale(first) == []  # looked less than a second ago: no second read of the study
    trials = optuna.load_study(study_name="race", storage=S.open_storage(url)).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
    # A beating trial is left alone.
    fresh = first.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    with live.pulse(first._storage, fresh._trial_id):
        time.sleep(0.1)
        assert live.fail_stale(second, force=True) == []


def test_mlflow_logs_every_trial_with_its_reports_metrics_and_state(make_space, hpsearch, tmp_path: Path,
                                                                    monkeypatch) -> None:
    pytest.importorskip("mlflow")
    uri = f"file:{tmp_path}/mlruns"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    hpsearch("run", "--space", str(make_space(fixed__epochs=2)), "--trials", "3", "--quiet", "--mlflow", uri,
             check=True)
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [t.number for t in study.trials]
    for t in study.trials:
        run = runs[t.number]
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert run.data.params["learning_rate"] == str(t.params["learning_rate"])
        assert run.data.params["epochs"] == "2"  # fixed hyperparameters too
        steps = client.get_metric_history(run.info.run_id, "accuracy")
        assert {m.step: m.value for m in steps} == pytest.approx(t.intermediate_values)
        if t.state.name == "COMPLETE":
            assert run.data.metrics["val_accuracy"] == pytest.approx(t.user_attrs["val_accuracy"])
            assert run.data.metrics["trial_value"] == pytest.approx(t.value)
        assert run.data.tags["hpsearch.status"] == t.user_attrs["status"]


def test_a_tracking_store_mlflow_refuses_is_one_line_before_anything_is_written(make_space, hpsearch,
                                                                                 tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--mlflow", f"file://{tmp_path}/mlruns")
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "--mlflow file://" in res.stderr and "sqlite:///mlflow.db" in res.stderr
    assert "MLFLOW_ALLOW_FILE_STORE" in res.stderr
    assert not (make_space().parent / "studies.db").exists()


def test_mlflow_flag_without_uri_needs_the_environment_variable(make_space, hpsearch) -> None:
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--mlflow",
                   env={"MLFLOW_TRACKING_URI": None})  # None: unset for the command
    assert res.returncode == 2 and "MLFLOW_TRACKING_URI" in res.stderr
    assert not (make_space().parent / "studies.db").exists()

"""A storage outage ridden out: a private PostgreSQL and a private Redis (each started by the test on its own port)
stopped under two workers mid-trial and started again; the workers wait, the trials that were running complete,
the study reaches its total, and nothing prints a traceback. Past the window a worker stops with one line."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.study.resilient import StorageUnavailable, resilient, transient
from tests.helpers import start_cli

REQUIRE = bool(os.environ.get("HPSEARCH_TEST_REQUIRE_SERVICES"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is needed for the outage test")
    pytest.skip(f"{what} is not installed")


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary directory), stopped and started at will."""

    def __init__(self, root: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            _missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)")
        # Under /tmp itself: as root the server runs as postgres, which cannot enter pytest's private directories.
        self.bin, self.port = Path(bins[-1]), _free_port()
        self.data = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.data, "postgres")
        subprocess.run([*self.user, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self.user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                        str(self.data / "log"), "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1",
                        "start"], check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)

    def remove(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)


class PrivateRedis:
    """A Redis server of the test's own that keeps its data across a restart (append-only file)."""

    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None:
            _missing("redis-server")
        self.dir, self.port, self.proc = root, _free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.dir), "--appendonly", "yes", "--save", ""],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: Redis writes its append-only file and exits
        self.proc.wait(timeout=20)


class _Reader(threading.Thread):
    """A worker's stderr, read as it comes (so that the test can wait for a line)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []
        self.start()

    def run(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def _ride_out(server, make_space, tmp_path: Path, outage_s: float) -> None:
    """Two workers on a study with a budget of 3 trials of ~5 s; the server goes away for ``outage_s`` once both
    train, and comes back: the two running trials complete, and the third is asked after the outage."""
    server.start()
    space = make_space("long.yaml", fixed__epochs=10, study__pruner={"name": "none"}, study__reports_per_epoch=1)
    flags = ["--total", "3", "--quiet", "--storage", server.url, "--study-name", "outage", "--heartbeat-interval",
             "2", "--grace-period", str(int(outage_s) + 60), "--storage-retry-s", str(int(outage_s) + 60)]
    workers = [start_cli(["run", "--space", str(space), *flags], tmp_path) for _ in range(2)]
    readers = [_Reader(p) for p in workers]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(r.saw("started") for r in readers):
        time.sleep(0.2)
    assert all(r.saw("started") for r in readers), [r.lines for r in readers]
    time.sleep(2)
    server.stop()
    time.sleep(outage_s)
    server.start()
    for proc in workers:
        proc.wait(timeout=300)
    for proc, reader in zip(workers, readers):
        reader.join(timeout=10)
        text = "".join(reader.lines)
        assert proc.returncode == 0, text
        assert "Traceback" not in text and "not answering" in text, text
    trials = optuna.load_study(study_name="outage", storage=resilient(
        optuna.storages.RDBStorage(server.url) if server.url.startswith("postgresql") else
        optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(server.url)), "s")).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states, states
    assert states[:2] == ["COMPLETE", "COMPLETE"]  # the trials running through the outage finished, not FAIL
    server.stop()


@pytest.fixture
def postgres(tmp_path: Path):
    server = PrivatePostgres(tmp_path)
    yield server
    subprocess.run([*server.user, str(server.bin / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "stop"],
                   capture_output=True)
    server.remove()


def test_a_postgresql_outage_under_two_workers_loses_nothing(postgres, make_space, tmp_path: Path) -> None:
    _ride_out(postgres, make_space, tmp_path, outage_s=6)


def test_a_redis_journal_outage_under_two_workers_loses_nothing(make_space, tmp_path: Path) -> None:
    pytest.importorskip("redis")
    (tmp_path / "redis").mkdir()
    _ride_out(PrivateRedis(tmp_path / "redis"), make_space, tmp_path, outage_s=6)


def test_past_the_window_a_worker_stops_with_one_line_naming_the_storage(postgres, make_space, tmp_path: Path) -> None:
    postgres.start()
    url = postgres.url.replace("postgres@", "postgres:s3cret@")
    space = make_space("long.yaml", fixed__epochs=30, study__pruner={"name": "none"})
    worker = start_cli(["run", "--space", str(space), "--trials", "1", "--storage", url, "--quiet",
                        "--storage-retry-s", "3"], tmp_path)
    reader = _Reader(worker)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not reader.saw("started"):
        time.sleep(0.2)
    postgres.stop()
    worker.wait(timeout=120)
    reader.join(timeout=10)
    text = "".join(reader.lines)
    assert worker.returncode == 1 and "Traceback" not in text and "s3cret" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"error: storage postgresql+psycopg://postgres:***@127.0.0.1:{postgres.port}/postgres did "
                           f"not answer for 3 s"), last


def test_which_errors_are_an_outage() -> None:
    import sqlalchemy.exc

    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    assert transient(refused) and transient(ConnectionResetError())
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused
    try:  # Optuna's own follow-on error, raised while handling the storage's (its 'updated_state' bug)
        try:
            raise wrapped
        except optuna.exceptions.StorageInternalError:
            raise UnboundLocalError("cannot access local variable 'updated_state'")
    except UnboundLocalError as exc:
        assert transient(exc)
    assert not transient(sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("duplicate key")))
    assert not transient(ValueError("bad value")) and not transient(KeyError("trial"))


def test_a_retried_write_that_had_reached_the_storage_counts_as_done() -> None:
    """Finishing a trial whose first attempt reached the storage but whose answer was lost: the retry meets a
    finished trial, which is what was asked."""
    inner = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=inner)
    trial = study.ask()
    calls = {"n": 0}
    real = inner.set_trial_state_values

    def flaky(trial_id, state, values=None):
        calls["n"] += 1
        result = real(trial_id, state, values)
        if calls["n"] == 1:
            raise ConnectionResetError("the answer was lost")
        return result

    inner.set_trial_state_values = flaky
    proxy = resilient(inner, "memory", window=5)
    assert proxy.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [0.5]) is True
    assert inner.get_trial(trial._trial_id).state.name == "COMPLETE" and calls["n"] == 2
    refused = resilient(type("Down", (optuna.storages.InMemoryStorage,), {
        "get_all_studies": lambda self: (_ for _ in ()).throw(ConnectionRefusedError("refused"))})(), "down:1",
        window=1)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match="storage down:1 did not answer for 1 s"):
        refused.get_all_studies()
    assert time.monotonic() - t0 < 3

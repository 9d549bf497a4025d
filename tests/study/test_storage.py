"""Storage: URL resolution, password masking everywhere, SQLite WAL, unreachable and dropped connections."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import sqlalchemy

from hpsearch.config.load import load_space
from hpsearch.config.options import RunOptions
from hpsearch.errors import HpsearchError
from hpsearch.study import runner, storage
from hpsearch.study.progress import Progress


def test_url_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage.resolve_url(None) == "sqlite:///studies.db"
    monkeypatch.setenv("HPSEARCH_STORAGE", "sqlite:///env.db")
    assert storage.resolve_url(None) == "sqlite:///env.db"
    assert storage.resolve_url("sqlite:///flag.db") == "sqlite:///flag.db"


def test_redact_hides_passwords_only() -> None:
    assert storage.redact("postgresql://bob:pw@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert storage.redact("mysql+pymysql://root@h/x") == "mysql+pymysql://root@h/x"
    assert storage.redact("sqlite:///studies.db") == "sqlite:///studies.db"


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    st = storage.open_storage(f"sqlite:///{tmp_path}/s.db")
    with st.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("PRAGMA journal_mode")).scalar() == "wal"


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(HpsearchError) as info:
        storage.open_storage("postgresql://u:topsecret@127.0.0.1:9/db")
    text = str(info.value)
    assert text.startswith("cannot open storage postgresql://u:***@127.0.0.1:9/db") and "topsecret" not in text
    assert len(text.splitlines()) == 1


def test_dropped_connections_are_replaced(postgres_url: str, make_space, study_name: str) -> None:
    """Kill every server-side connection of the study mid-run: pool_pre_ping reconnects and the study goes on."""
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    class DropAfterFirst(Progress):
        def __call__(self, study, trial) -> None:
            if trial.number == 0:
                with admin.connect() as conn:
                    killed = conn.execute(sqlalchemy.text(
                        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                        "where datname = current_database() and pid <> pg_backend_pid()")).scalar()
                assert killed >= 1

    options = RunOptions(storage=postgres_url, trials=3, study_name=study_name)
    study = runner.run_study(load_space(make_space(fixed__epochs=1)), options, progress=DropAfterFirst())
    assert [t.state.name for t in study.trials if t.state.is_finished()].count("COMPLETE") + \
        [t.state.name for t in study.trials].count("PRUNED") == 3
    admin.dispose()


def test_password_never_shown(postgres_url: str, make_space, hpsearch, tmp_path: Path, study_name: str) -> None:
    """PostgreSQL here trusts local connections, so any password works: use one and look for it everywhere."""
    url = sqlalchemy.engine.make_url(postgres_url).set(password="Hunter2Secret")
    url_text = url.render_as_string(hide_password=False)
    run = hpsearch("run", "--space", str(make_space(fixed__epochs=1)), "--trials", "2", "--quiet",
                   "--storage", url_text, "--study-name", study_name, check=True)
    export = hpsearch("export", "--study", study_name, "--output", "best.yaml", "--storage", url_text, check=True)
    missing = hpsearch("export", "--study", study_name + "-nope", "--output", "x.yaml", "--storage", url_text)
    listing = hpsearch("trials", "--study", study_name, "--storage", url_text, check=True)
    studies = hpsearch("studies", "--storage", url_text, check=True)
    seen = "".join(p.stdout + p.stderr for p in (run, export, missing, listing, studies))
    seen += (tmp_path / "best.yaml").read_text()
    assert "***" in seen and "Hunter2Secret" not in seen
    study = optuna.load_study(study_name=study_name, storage=url_text)
    assert "Hunter2Secret" not in repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])


_OPEN_AT = """
import os, sys, time
from hpsearch.study.storage import open_storage
open(sys.argv[2] + "." + str(os.getpid()), "w").close()  # ready
while not os.path.exists(sys.argv[2]):  # every process opens at once
    time.sleep(0.001)
open_storage(sys.argv[1])
"""


def _open_together(url: str, n: int) -> list[str]:
    """Start ``n`` processes that open ``url`` at the same instant; return the last error line of each failure."""
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    go = Path(tempfile.mkdtemp(prefix="hpsearch-open-")) / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, url, str(go)], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(n)]
    deadline = time.monotonic() + 60
    while len(list(go.parent.glob("go.*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    return [e.strip().splitlines()[-1] for p, e in zip(procs, errors) if p.returncode]


def test_many_processes_create_the_tables_of_an_empty_database_at_once(empty_database: str) -> None:
    """Optuna creates its tables without a lock: unguarded, most of 6 processes failed here with 'already exists'
    (MariaDB 1050) or a duplicate pg_type / alembic version key (PostgreSQL, MariaDB 1062)."""
    assert _open_together(empty_database, 6) == []
    study = optuna.create_study(storage=empty_database, study_name="after")
    assert optuna.get_all_study_names(empty_database) == ["after"] and study.trials == []


def test_many_processes_create_an_sqlite_file_at_once(tmp_path: Path) -> None:
    assert _open_together(f"sqlite:///{tmp_path}/new.db", 6) == []


def test_a_race_error_is_retried_and_any_other_is_not(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    real = optuna.storages.RDBStorage

    def losing_once(url: str, **kwargs: object) -> object:
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("(1050, 'Table "
                                                  "\\'studies\\' already exists')"))
        return real(url, **kwargs)

    waits: list[float] = []
    monkeypatch.setattr(optuna.storages, "RDBStorage", losing_once)
    monkeypatch.setattr(storage.time, "sleep", waits.append)
    storage.open_storage(f"sqlite:///{tmp_path}/s.db")
    assert len(calls) == 2 and len(waits) == 1
    with pytest.raises(HpsearchError, match="cannot open storage"):
        storage.open_storage("postgresql://u@127.0.0.1:9/db")  # connection refused: not retried
    assert len(waits) == 1


def test_reading_a_study_file_leaves_it_unchanged(tmp_path: Path) -> None:
    """report / export / trials on a shipped example must not switch it to WAL or otherwise rewrite it."""
    path = tmp_path / "example.db"
    url = f"sqlite:///{path}"
    optuna.create_study(study_name="s", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = path.read_bytes()
    study = optuna.load_study(study_name="s", storage=storage.open_storage(url, read_only=True))
    assert len(study.trials) == 2
    assert path.read_bytes() == before and not (tmp_path / "example.db-wal").exists()


def test_opening_a_study_retries_a_transient_commit_failure(tmp_path: Path, make_space,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """As when InnoDB picks one of several workers opening the same study as a deadlock victim."""
    space = load_space(make_space())
    real = optuna.Study.set_user_attr
    failures = iter([True, True])

    def flaky(self: optuna.Study, key: str, value: object) -> None:
        if key == "metric" and next(failures, False):
            raise optuna.exceptions.StorageInternalError("Deadlock found when trying to get lock")
        real(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", flaky)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    study = runner.open_study(storage.open_storage(f"sqlite:///{tmp_path}/s.db"), "s", space)
    assert study.user_attrs["metric"] == "accuracy" and len(optuna.get_all_study_names(study._storage)) == 1


def test_a_persistent_commit_failure_is_not_retried_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise optuna.exceptions.StorageInternalError("disk full")

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        storage.retry_transient(broken, attempts=3)
    assert len(calls) == 3

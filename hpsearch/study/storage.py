"""Storage: which storage a study lives in, how to connect to it, and how to print its URL safely.

A storage is named by URL: an SQLAlchemy URL (``sqlite:///studies.db``, ``postgresql://...``, ``mysql+pymysql://``)
is Optuna's RDB storage; ``redis://HOST:PORT/DB`` its journal storage on Redis; ``journal:///study.log`` its journal
storage on a file (relative path; ``journal:////abs/path.log`` absolute, as SQLite URLs); ``grpc://HOST:PORT`` a
gRPC proxy (``hpsearch storage-proxy``) in front of any of them. Here live the URL resolution order (flag,
$HPSEARCH_STORAGE, ./studies.db), engine options per RDB backend (SQLite busy timeout, pre-ping for servers),
heartbeats (Optuna's on RDB storages, :mod:`hpsearch.liveness` elsewhere) that turn a dead worker's trial into
FAIL, and the retry of such trials with the same parameters.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import time
import warnings
from typing import Any, Callable, Iterator, TypeVar

from ..errors import HpsearchError, UsageError

T = TypeVar("T")

DEFAULT_STORAGE = "sqlite:///studies.db"
ENV_VAR = "HPSEARCH_STORAGE"
HEARTBEAT_INTERVAL = 60
GRACE_PERIOD = 180
MAX_RETRY = 2


def resolve_url(flag: str | None) -> str:
    """``--storage`` if given, else $HPSEARCH_STORAGE, else sqlite:///studies.db in the working directory."""
    return flag or os.environ.get(ENV_VAR) or DEFAULT_STORAGE


def storage_kind(url: str) -> str:
    """``rdb``, ``redis``, ``journal`` or ``grpc``: which Optuna storage ``url`` names."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis"
    return scheme if scheme in ("journal", "grpc") else "rdb"


def journal_path(url: str) -> str:
    """The file of a ``journal:`` URL: ``journal:///rel.log`` is relative, ``journal:////abs.log`` absolute."""
    rest = url[len("journal:"):]
    path = rest[3:] if rest.startswith("///") else rest.lstrip("/") if rest.startswith("//") else rest
    if not path:
        raise HpsearchError(f"storage {url}: name the journal file, e.g. journal:///studies.log")
    return os.path.expanduser(path)


def grpc_address(url: str) -> tuple[str, int]:
    """HOST and PORT of a ``grpc://HOST:PORT`` URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise HpsearchError(f"storage {redact(url)}: expected grpc://HOST:PORT (e.g. grpc://127.0.0.1:13000)")
    return parts.hostname, port


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs, tables, exported files and errors."""
    if storage_kind(url) == "journal":
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@", 1)[-1] if "@" in url else url


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: wait on a locked SQLite file; detect dropped server connections."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "pool_recycle": 3600}


def default_location(storage_url: str) -> str:
    """Beside an SQLite or journal file (``x.db`` -> ``x-artifacts``), else ``./hpsearch-artifacts`` (absolute)."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    if storage_kind(storage_url) == "journal":
        log = Path(journal_path(storage_url)).expanduser().resolve()
        return str(log.with_name(f"{log.stem}-artifacts"))
    try:
        url = make_url(storage_url)
    except Exception:
        url = None
    if url is not None and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database).expanduser().resolve()
        return str(db.with_name(f"{db.stem}-artifacts"))
    return str(Path("hpsearch-artifacts").resolve())


def artifact_location(study: Any, storage_url: str, artifacts: str | None) -> str:
    """Where the study's kept models and checkpoints go: ``--artifacts``, else the location the study recorded,
    else :func:`default_location`; recorded on the study (absolute), so that every worker and ``export`` find it."""
    from pathlib import Path

    from . import record

    location = artifacts or study.user_attrs.get(record.ARTIFACTS) or default_location(storage_url)
    if not location.startswith(("s3://", "gs://")):
        location = str(Path(location).expanduser().resolve())
    if study.user_attrs.get(record.ARTIFACTS) != location:
        study.set_user_attr(record.ARTIFACTS, location)
    return location


def open_storage(url: str, heartbeat_interval: int | None = HEARTBEAT_INTERVAL, grace_period: int | None = None,
                 max_retry: int = MAX_RETRY, read_only: bool = False) -> Any:
    """An Optuna RDBStorage for ``url`` with heartbeats on and failed (stale) trials retried ``max_retry`` times.

    ``read_only`` (listing, export, report, dashboard): no heartbeats and no journal-mode change, so reading a
    study file leaves it as it was. Connection failures become one clear HpsearchError without the password.
    """
    if read_only:
        heartbeat_interval = None
    if storage_kind(url) != "rdb":
        return _open_other(url)
    import optuna
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval:
            from .durable import RetryStale

            retry = RetryStale(max_retry) if max_retry > 0 else None
            kwargs = {"heartbeat_interval": heartbeat_interval,
                      "grace_period": grace_period or max(GRACE_PERIOD, 2 * heartbeat_interval),
                      "heartbeat_stale_trial_callback": retry}
        try:
            storage = _create_rdb_storage(url, kwargs)
            if url.startswith("sqlite") and not read_only:
                _sqlite_wal(storage)
            return storage
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise HpsearchError(f"cannot open storage {redact(url)}: {reason.replace(url, redact(url))}") from exc


def _open_other(url: str) -> Any:
    """A journal storage (file or Redis) or a gRPC proxy client, connected (a server that does not answer is one
    clear error, not a hang at the first trial)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental in name only
        return _connect(url)


def _connect(url: str) -> Any:
    kind = storage_kind(url)
    try:
        if kind == "journal":
            return _open_journal(url)
        if kind == "redis":
            import redis
            from optuna.storages.journal import JournalRedisBackend, JournalStorage

            redis.Redis.from_url(url).ping()
            return JournalStorage(JournalRedisBackend(url))
        from optuna.storages import GrpcStorageProxy

        host, port = grpc_address(url)
        proxy = GrpcStorageProxy(host=host, port=port)
        proxy.wait_server_ready(timeout=GRPC_CONNECT_TIMEOUT)
        return proxy
    except HpsearchError:
        raise
    except ImportError as exc:
        extra = {"redis": "redis", "grpc": "grpc"}.get(kind)
        hint = f": pip install 'hpsearch[{extra}]'" if extra else ""
        raise HpsearchError(f"storage {redact(url)} needs {exc.name or exc}{hint}") from None
    except Exception as exc:  # connection refused, timeout, unreadable file: the reason, without the password
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HpsearchError(f"cannot open storage {redact(url)}: {reason.replace(url, redact(url))}") from exc


def journal_lock(path: str) -> Any:
    """The lock of a journal file: a symlink beside it, atomic on every NFS version (the lock for a shared file
    system); Windows has no unprivileged symlinks, so it gets the O_EXCL lock."""
    from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock

    return JournalFileOpenLock(path) if os.name == "nt" else JournalFileSymlinkLock(path)


def _open_journal(url: str) -> Any:
    """A journal file's storage (its torn last line set aside at each append: :mod:`hpsearch.study.journal`); an
    unreadable line in its middle is one error naming the line, its byte and the repair."""
    from pathlib import Path

    from optuna.storages.journal import JournalStorage

    from .journal import TornSafeJournalFile, unreadable_lines

    path = journal_path(url)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        return JournalStorage(TornSafeJournalFile(path, lock_obj=journal_lock(path)))
    except ValueError as exc:  # json's decode error, Optuna's "Invalid log format"
        bad = [b for b in unreadable_lines(Path(path)) if b.data.endswith(b"\n")]
        if not bad:
            raise
        first = bad[0]
        raise HpsearchError(f"storage {url}: line {first.line} (byte {first.offset}) of {path} is not a journal "
                            f"record (a write cut short, then appended to); set it aside with: hpsearch repair "
                            f"--storage {url}") from exc


def repair_storage(url: str) -> str:
    """``hpsearch repair``: set aside the unreadable lines of a journal file (:func:`hpsearch.study.journal.repair`)
    and open it; return what was done, in a line."""
    from pathlib import Path

    from .journal import repair

    if storage_kind(url) != "journal":
        raise UsageError(f"--storage {redact(url)}: repair mends journal files (journal:///x.log); a database or "
                         f"Redis keeps its own consistency")
    path = journal_path(url)
    if not os.path.isfile(path):
        raise UsageError(f"--storage {url}: no such file {path}")
    done = repair(Path(path), journal_lock(path))
    if not done["lines_set_aside"]:
        return f"{url}: every line is a journal record; nothing to repair"
    import optuna

    studies = optuna.get_all_study_names(open_storage(url, read_only=True))
    return (f"{url}: set aside {done['lines_set_aside']} unreadable line(s) ({done['bytes_set_aside']} bytes) in "
            f"{path}.torn, kept {done['records_kept']} whole record(s) found in them; the journal opens again "
            f"({len(studies)} stud{'y' if len(studies) == 1 else 'ies'}); the operations on those lines are lost")


def load_study(storage_url: str, name: str) -> Any:
    """An existing study, opened read-only, or a UsageError that lists the studies the storage has."""
    import optuna

    storage = open_storage(storage_url, read_only=True)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        have = ", ".join(names) if names else "none"
        raise UsageError(f"no study named {name!r} in {redact(storage_url)} (studies there: {have})")
    return optuna.load_study(study_name=name, storage=storage)


def serve_proxy(storage: str | None, host: str = "127.0.0.1", port: int = 13000,
                announce: Callable[[str], None] = print) -> None:
    """Run Optuna's gRPC proxy server for the storage at URL ``storage`` (resolved as everywhere) until stopped."""
    url = resolve_url(storage)
    if storage_kind(url) == "grpc":
        raise UsageError(f"--storage {redact(url)}: the proxy serves a database or journal, not another proxy")
    backend = open_storage(url, heartbeat_interval=None)  # workers' heartbeats go through the proxy as attributes
    try:
        from optuna.storages import run_grpc_proxy_server
    except ImportError as exc:
        raise HpsearchError(f"storage-proxy needs {exc.name or exc}: pip install 'hpsearch[grpc]'") from None
    announce(f"gRPC storage proxy for {redact(url)} on grpc://{host}:{port} (Ctrl-C to stop)")
    run_grpc_proxy_server(backend, host=host, port=port)


GRPC_CONNECT_TIMEOUT = 10
"""Seconds to wait for a gRPC proxy to answer before giving up on it."""


def liveness_for(storage: Any, url: str, heartbeat_interval: int | None, grace_period: int | None,
                 max_retry: int) -> Any:
    """hpsearch's own heartbeats (:class:`~hpsearch.study.liveness.Liveness`) for a storage Optuna gives none (journal,
    gRPC proxy); None on an RDB storage (Optuna's heartbeats) or with heartbeats off."""
    from .liveness import Liveness

    if not heartbeat_interval or storage_kind(url) == "rdb":
        return None
    return Liveness(heartbeat_interval, grace_period or max(GRACE_PERIOD, 2 * heartbeat_interval), max_retry)


SCHEMA_LOCK_KEY = 0x6870736561726368  # "hpsearch" in ASCII: one PostgreSQL advisory lock for every hpsearch
SCHEMA_LOCK_NAME = "hpsearch_optuna_schema"
SCHEMA_LOCK_TIMEOUT = 120
_SCHEMA_RACE = re.compile(r"already exists|duplicate|unique constraint|deadlock|database is locked", re.IGNORECASE)
"""What a losing process sees when several create Optuna's tables at once (PostgreSQL: duplicate pg_type key;
MySQL/MariaDB: 1050 table exists, 1062 duplicate alembic version; SQLite: table exists or locked)."""


def _create_rdb_storage(url: str, kwargs: dict[str, Any], attempts: int = 5) -> Any:
    """Optuna's RDBStorage, safe when many processes (on one machine or many) open an empty database at once.

    Optuna creates its tables, then inserts its version rows, without a lock: on a fresh database all but one of
    the processes that start together can fail. Construction runs under a server-side lock (PostgreSQL advisory
    lock, MySQL/MariaDB GET_LOCK), and an error of that race is retried, since creation is idempotent (SQLite,
    or a server where the lock could not be had in time).
    """
    import optuna
    import sqlalchemy.exc

    def create() -> Any:
        with schema_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **kwargs)

    for attempt in range(attempts - 1):
        try:
            return create()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if not _SCHEMA_RACE.search(str(exc)):
                raise
            time.sleep(0.2 * 2**attempt * (0.5 + random.random()))
    return create()  # the last attempt: its failure is the caller's


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold a database-wide lock for the block on PostgreSQL and MySQL/MariaDB (no-op elsewhere).

    The lock lives on its own connection, so it spans every connection Optuna opens meanwhile, and it is released
    when that connection closes, also if this process dies.
    """
    with _server_lock(url, SCHEMA_LOCK_KEY, SCHEMA_LOCK_NAME, SCHEMA_LOCK_TIMEOUT):
        yield


@contextlib.contextmanager
def _server_lock(url: str, key: int, name: str, wait_s: int) -> Iterator[bool]:
    """A PostgreSQL advisory lock ``key`` or a MySQL/MariaDB named lock ``name`` held for the block on a connection
    of its own (yields whether it was had: MySQL gives up after ``wait_s``); elsewhere nothing (yields True)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        take, give = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
        args: dict[str, Any] = {"key": key}
    elif backend in ("mysql", "mariadb"):
        take, give = f"SELECT GET_LOCK(:name, {int(wait_s)})", "SELECT RELEASE_LOCK(:name)"
        args = {"name": name}
    else:
        yield True
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text(take), args).scalar()
            had = backend == "postgresql" or got == 1  # PostgreSQL's waits until it has it; GET_LOCK: 0 on timeout
            try:
                yield had
            finally:
                if had:
                    conn.execute(sqlalchemy.text(give), args)
    finally:
        engine.dispose()


STUDY_LOCK_WAIT_S = 60
"""Seconds a worker waits for the study's lock (held for a count and one trial's creation: milliseconds) before it
counts and asks without it (the surplus check of :func:`hpsearch.study.objective.start_trial` still holds)."""


@contextlib.contextmanager
def study_lock(url: str, study: str) -> Iterator[bool]:
    """Hold, for the block, a lock that every worker of study ``study`` on storage ``url`` shares, on any machine
    that reaches the storage; yield whether one was had.

    A PostgreSQL advisory lock or a MySQL/MariaDB named lock (on its own connection, released if this process
    dies), a lock file beside an SQLite or journal file (``flock``: released with the process), a Redis lock (one
    that outlives a dead holder expires). A gRPC proxy offers none: yields False, and workers on it count and ask
    without one."""
    import hashlib

    digest = hashlib.sha1(f"hpsearch-study:{study}".encode()).digest()
    kind = storage_kind(url)
    if kind == "grpc":
        yield False
        return
    if kind == "redis":
        import redis

        lock = redis.Redis.from_url(url).lock(f"hpsearch:study-lock:{digest.hex()[:16]}", timeout=STUDY_LOCK_WAIT_S,
                                              blocking_timeout=STUDY_LOCK_WAIT_S)
        had = lock.acquire()
        try:
            yield had
        finally:
            if had:
                with contextlib.suppress(redis.exceptions.LockError):
                    lock.release()
        return
    if kind == "journal":
        path = journal_path(url)
    else:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            with _server_lock(url, int.from_bytes(digest[:8], "big", signed=True), f"hpsearch_{digest.hex()[:20]}",
                              STUDY_LOCK_WAIT_S) as had:
                yield had
            return
        path = parsed.database or ""
        if path in ("", ":memory:"):
            yield True
            return
    with _file_lock(f"{path}-hpsearch.lock") as had:
        yield had


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[bool]:
    """``flock`` on ``path`` (made if missing), for at most :data:`STUDY_LOCK_WAIT_S` seconds of waiting."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, had = time.monotonic() + STUDY_LOCK_WAIT_S, False
        while not had:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                had = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
        try:
            yield had
        finally:
            if had:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _sqlite_wal(storage: Any) -> None:
    """Put every connection to an SQLite study file in WAL mode, so readers never block the worker that writes.

    Set per connection (an event on connect) and the pool emptied, because connections Optuna opened while
    creating its tables would otherwise keep the old journal mode.
    """
    import sqlalchemy

    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", _on_connect)
    storage.engine.dispose()


def retry_transient(fn: Callable[[], T], attempts: int = 5, first_wait: float = 0.2) -> T:
    """Call ``fn``, retrying when a commit fails for a transient reason (Optuna's StorageInternalError).

    Several workers opening one study at the same moment write the same rows; MySQL/MariaDB's InnoDB may answer
    one of them with a deadlock ("try restarting transaction"), PostgreSQL with a serialization failure. What
    ``fn`` does must be idempotent (opening a study is). Waits grow 2x per attempt, with jitter.
    """
    import optuna

    for attempt in range(attempts - 1):
        try:
            return fn()
        except optuna.exceptions.StorageInternalError:
            time.sleep(first_wait * 2**attempt * (0.5 + random.random()))
    return fn()  # the last attempt: its failure is the caller's

"""Riding out a storage outage: every call a worker makes on its storage is retried, with backoff, while the
storage's error is a transient one (a database restarting or failing over, a connection refused or reset, Redis
unreachable, an SQLite file busy past its timeout), for up to ``--storage-retry-s`` seconds.

A trial does not notice an outage shorter than that: it waits at its next report (or its end, or the next trial's
start) until the storage answers, then writes what it has and goes on; its heartbeats are written again from then
on. Past the window the worker stops with one line naming the storage (password masked), exit 1, and its running
trial is left for the heartbeat retry of the other workers. A write that is retried after it may already have
reached the storage is made idempotent where Optuna's is not: finishing a trial that the first attempt did finish
counts as done.

:func:`resilient` wraps any Optuna storage (RDB through Optuna's cache, journal, gRPC proxy) in a proxy that keeps
its interface, Optuna's heartbeats included, so that ``optuna.create_study``, the objective, the artifact keeper and
the liveness thread all go through it.
"""
from __future__ import annotations

import logging
import random
import sqlite3
import time
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from ..errors import HpsearchError

RETRY_S = 120
"""How long a worker waits for its storage to answer again (``--storage-retry-s``)."""
FIRST_WAIT_S, MAX_WAIT_S = 0.5, 5.0

log = logging.getLogger(__name__)

_TRANSIENT_NAMES = {
    ("sqlalchemy.exc", "OperationalError"), ("sqlalchemy.exc", "DisconnectionError"),
    ("sqlalchemy.exc", "InterfaceError"), ("sqlalchemy.exc", "TimeoutError"),
    ("psycopg", "OperationalError"), ("psycopg.errors", "OperationalError"), ("psycopg2", "OperationalError"),
    ("pymysql.err", "OperationalError"), ("pymysql.err", "InterfaceError"),
    ("redis.exceptions", "ConnectionError"), ("redis.exceptions", "TimeoutError"),
    ("redis.exceptions", "BusyLoadingError"),
}
"""Errors (module, class name) that say the storage is not answering now, not that the request is wrong."""


def _root(exc: BaseException) -> str:
    """The first line of the innermost error in ``exc``'s chain (a driver's "connection refused", not Optuna's
    wrapper's guess about invalid data)."""
    seen, last = set(), exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        last = exc
        exc = exc.__cause__ or exc.__context__
    text = (str(last).strip().splitlines() or [""])[0].strip()
    return f"{type(last).__name__}: {text}"[:200] if text else type(last).__name__


def transient(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from or during, says the storage is unreachable for now."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = type(exc)
        if any((c.__module__.split("._")[0], c.__name__) in _TRANSIENT_NAMES for c in kind.__mro__):
            return True
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return True
        code = getattr(exc, "code", None)
        if kind.__module__.startswith("grpc") and callable(code) and str(code()).endswith(("UNAVAILABLE",
                                                                                             "DEADLINE_EXCEEDED")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class StorageUnavailable(HpsearchError):
    """The storage did not answer for the whole retry window: the worker stops (exit 1); its running trial is
    retried by another worker once its heartbeat is stale."""


def unavailable(exc: BaseException) -> StorageUnavailable | None:
    """The StorageUnavailable ``exc`` is, or was raised from or while handling (None: none)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StorageUnavailable):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class _Resilient:
    """The calls of a storage, each retried while its error is transient (see the module)."""

    def __init__(self, inner: BaseStorage, shown: str, window: float) -> None:
        self._inner, self._shown, self._window = inner, shown, window
        self._down_since: float | None = None
        """When the current outage began (None: the storage answers)."""

    def __getattr__(self, name: str) -> Any:  # what is not a storage call (an engine, a backend) is the inner one's
        return getattr(self._inner, name)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._inner, name)
        deadline, wait, attempt = time.monotonic() + self._window, FIRST_WAIT_S, 0
        while True:
            try:
                result = method(*args, **kwargs)
                if self._down_since is not None:
                    log.warning("storage %s answering again after %.0f s", self._shown,
                                time.monotonic() - self._down_since)
                    self._down_since = None
                return result
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempt and name == "set_trial_state_values" and self._finished_as_asked(*args, **kwargs):
                    return True  # the attempt that failed to answer did reach the storage
                raise
            except Exception as exc:
                if not transient(exc):
                    raise
                if time.monotonic() + wait > deadline:
                    reason = _root(exc)
                    raise StorageUnavailable(
                        f"storage {self._shown} did not answer for {self._window:g} s (--storage-retry-s): "
                        f"{reason}; this worker stops, and its running trial is retried by another worker once "
                        f"its heartbeat is stale") from None
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("storage %s not answering (%s): retrying for up to %g s", self._shown,
                                type(exc).__name__, self._window)
                time.sleep(wait * (0.5 + random.random()))
                wait, attempt = min(MAX_WAIT_S, wait * 2), attempt + 1

    def _finished_as_asked(self, trial_id: int, state: Any, values: Any = None) -> bool:
        trial = self._inner.get_trial(trial_id)
        return trial.state == state and (values is None or list(trial.values or []) == list(values))

    def record_heartbeat(self, trial_id: int) -> None:
        """A beat: retried like every call, but one that cannot be written is only missed (the trial's next beat
        or write says it is alive), never an error in the heartbeat thread."""
        try:
            self._call("record_heartbeat", trial_id)
        except StorageUnavailable:
            log.debug("heartbeat of trial %s missed: the storage did not answer", trial_id)


def _method(name: str) -> Callable[..., Any]:
    def call(self: _Resilient, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    call.__name__ = name
    return call


_STORAGE = sorted(BaseStorage.__abstractmethods__ | {"get_n_trials", "get_trial_number_from_id", "get_trial_param",
                                                     "get_trial_params", "get_trial_user_attrs",
                                                     "get_trial_system_attrs", "get_best_trial",
                                                     "get_trial_id_from_study_id_trial_number", "remove_session",
                                                     "check_trial_is_updatable"})
_HEARTBEAT = sorted(BaseHeartbeat.__abstractmethods__ - {"record_heartbeat"})

ResilientStorage = type("ResilientStorage", (_Resilient, BaseStorage), {n: _method(n) for n in _STORAGE})
ResilientHeartbeatStorage = type("ResilientHeartbeatStorage", (_Resilient, BaseStorage, BaseHeartbeat),
                                 {n: _method(n) for n in _STORAGE + _HEARTBEAT})


OPEN_RETRY_S = 10
"""How long opening a storage is retried at most: a worker that starts while its database restarts waits a little,
one whose address is wrong is told so soon."""


def ride_out(connect: Callable[[], BaseStorage], shown: str, window: float = RETRY_S) -> BaseStorage:
    """``connect()`` (opening a storage), retried while it fails for a transient reason, for up to ``window``
    seconds or :data:`OPEN_RETRY_S`, whichever is shorter. The last failure is raised as it was (one line, "cannot
    open storage ...")."""
    window = min(window, OPEN_RETRY_S)
    deadline, wait, said = time.monotonic() + window, FIRST_WAIT_S, False
    while True:
        try:
            return connect()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + wait > deadline:
                raise
            if not said:
                log.warning("storage %s not answering (%s): retrying for up to %g s", shown, _root(exc), window)
                said = True
            time.sleep(wait * (0.5 + random.random()))
            wait = min(MAX_WAIT_S, wait * 2)


def resilient(storage: BaseStorage, shown: str, window: float = RETRY_S) -> BaseStorage:
    """``storage`` (an RDB storage behind Optuna's cache, as ``optuna.create_study`` would put it) with every call
    retried through an outage of up to ``window`` seconds; ``shown`` names it in messages (password masked)."""
    if isinstance(storage, optuna.storages.RDBStorage):
        storage = optuna.storages.get_storage(storage)  # Optuna's trial cache, as create_study would add it
    if window <= 0:
        return storage
    cls = ResilientHeartbeatStorage if isinstance(storage, BaseHeartbeat) else ResilientStorage
    return cls(storage, shown, window)

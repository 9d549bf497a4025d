"""Ctrl-C and SIGTERM during a study: the running trial stops at its next training step, not wherever the signal lands.

Python raises KeyboardInterrupt at whatever bytecode runs when the signal arrives: inside a lazy import (leaving
modules half-imported), inside code a dataclass generates (CPython then makes the process die by SIGINT even after
the exception was handled) or inside a storage write (a connection mid-transaction). The worker then exits 1 or
-2 instead of marking its trial FAIL and exiting 130. While a study runs (:func:`handled`), a first signal is held
and raised at the next safe point (:func:`check`: every training step and evaluation batch, between trials); a
second one, a second or more later, raises at once, for the user who will not wait.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

FORCE_AFTER_S = 1.0
"""A second signal within this many seconds of the first is the same request (a terminal's Ctrl-C reaches a
local worker once from the terminal and once forwarded by ``--workers``' parent); a later one forces."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that Optuna marks the running trial FAIL as it does for Ctrl-C."""

    exit_code = 143
    """128 + SIGTERM, what a command killed by it exits with."""


class GroupStopped(KeyboardInterrupt):
    """Another member of this worker's fused group hit an error that stops the worker: this member's trial stops at
    its next step, as for Ctrl-C, and records ``reason``."""

    def __init__(self, reason: str = "stopped with its fused group") -> None:
        super().__init__(reason)
        self.reason = reason


def reason(exc: KeyboardInterrupt) -> str:
    """Why a trial stopped, as its status says it after ``failed:``."""
    return exc.reason if isinstance(exc, GroupStopped) else "interrupted"


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler that raises :class:`Terminated` at once (outside a study: setup, retraining)."""
    raise Terminated()


_pending: KeyboardInterrupt | None = None
_pending_at = 0.0


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _hold(signum: int, frame: Any) -> None:
    """The handler inside :func:`handled`: hold the first signal, raise on a later one."""
    global _pending, _pending_at
    if _pending is None:
        _pending, _pending_at = _exception(signum), time.monotonic()
        # os.write, not print: a handler that writes to a buffered stream the main thread is writing to raises.
        what = b"terminated (SIGTERM)" if signum == signal.SIGTERM else b"interrupted"
        os.write(2, b"\n[hpsearch] " + what + b": stopping at the next training step "
                    b"(send it again to stop at once)\n")
        return
    if time.monotonic() - _pending_at < FORCE_AFTER_S:
        return
    _pending = None
    raise _exception(signum)


def _takes_over(signum: int, current: Any) -> bool:
    """Replace only the handlers Python or hpsearch installed: never an ignored SIGINT (`cmd &`, nohup) nor a
    handler the embedding program set."""
    if signum == signal.SIGINT:
        return current is signal.default_int_handler
    return current in (signal.SIG_DFL, raise_terminated)


@contextmanager
def handled() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until :func:`check` within; on leaving normally, raise a signal still held.

    Only in the main thread (where Python delivers signals); elsewhere a no-op. Nested, the inner one keeps what the
    outer holds (a worker holds signals from its first line, so that none lands inside an import or a finalizer,
    where Python prints it and drops it)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if _hold in previous.values():  # within an outer handled(): a signal it holds stays held, for its owner to undo
        yield
        check()
        return
    mine = [s for s, h in previous.items() if _takes_over(s, h)]
    _pending = None
    for s in mine:
        signal.signal(s, _hold)
    try:
        yield
        check()
    finally:
        for s in mine:
            signal.signal(s, previous[s])
        _pending = None


def requested() -> bool:
    """Whether a signal is held: the study should stop after the running trial."""
    return _pending is not None


def check() -> None:
    """Raise the held signal's KeyboardInterrupt (or :class:`Terminated`), if any: call where stopping is safe.

    In a thread other than the main one (a member of a fused group) the signal stays held, so that every member
    stops; the main thread's check takes it."""
    global _pending
    if _pending is not None:
        exc = _pending
        if threading.current_thread() is threading.main_thread():
            _pending = None
            raise exc
        raise GroupStopped(exc.reason) if isinstance(exc, GroupStopped) else type(exc)()


def clear() -> None:
    """Drop a held signal (the main thread, after the members of a fused group stopped for another error)."""
    global _pending
    _pending = None


def stop_all(why: str) -> None:
    """Hold a :class:`GroupStopped` saying ``why`` (when nothing is held): every trial of this process stops at its
    next step as for Ctrl-C, recording ``why`` (a fused group whose member hit an error that stops the worker)."""
    global _pending, _pending_at
    if _pending is None:
        _pending, _pending_at = GroupStopped(why), time.monotonic()


def stop_study(study: Any, trial: Any) -> None:
    """An Optuna callback: stop ``study.optimize`` after this trial when a signal is held."""
    if requested():
        study.stop()

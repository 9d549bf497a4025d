"""Heartbeats for the storages Optuna gives none: the journal (a file or Redis) and the gRPC proxy.

Optuna's RDB storage records a running trial's heartbeat and fails trials whose worker went quiet
(``fail_stale_trials``); ``JournalStorage`` and ``GrpcStorageProxy`` do neither. Here a running trial writes a
timestamp system attribute every ``interval`` seconds from a daemon thread, and any worker, before it starts a
trial or counts the budget, turns RUNNING trials whose last beat is older than ``grace_period`` into FAIL and
re-enqueues their parameters with Optuna's own ``RetryHeartbeatStaleTrialCallback`` (so a retried trial carries
the same ``failed_trial`` / ``retry_history`` system attributes and reports as on an RDB storage, and its
checkpoint: :class:`hpsearch.study.durable.RetryStale`).

Two workers that notice the same stale trial race to fail it: on the journal, the log orders their writes and
the loser's write raises ``UpdateFinishedTrialError``, so exactly one of them re-enqueues it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import record

HEARTBEAT_ATTR = record.HEARTBEAT

log = logging.getLogger(__name__)


@dataclass
class Liveness:
    """How often a running trial beats, how long a silent one lives, and how often a dead one is retried."""

    interval: int
    grace_period: int
    max_retry: int
    checked: float = field(default=float("-inf"), repr=False)
    """When this process last looked for stale trials: it looks at most once per ``interval`` (each look reads
    every trial of the study, and a trial is only stale after ``grace_period`` > ``interval``)."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1 second, got {self.interval!r}")
        if self.grace_period <= self.interval:
            raise ValueError(f"grace_period must exceed interval ({self.interval}), got {self.grace_period!r}")
        if self.max_retry < 0:
            raise ValueError(f"max_retry must be >= 0, got {self.max_retry!r}")

    @contextlib.contextmanager
    def pulse(self, storage: Any, trial_id: int) -> Iterator[None]:
        """Beat for trial ``trial_id`` now and every ``interval`` seconds until the block ends."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                try:
                    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except Exception as exc:  # a finished trial or a transient error: the next beat tries again
                    log.debug("heartbeat of trial %s not written: %s", trial_id, exc)
                if stop.wait(self.interval):
                    return

        thread = threading.Thread(target=beat, name=f"hpsearch-heartbeat-{trial_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=max(5, self.interval))

    def fail_stale(self, study: Any, force: bool = False) -> list[int]:
        """FAIL the study's RUNNING trials whose last beat (or start) is older than the grace period, and retry
        them (up to ``max_retry`` times); return the numbers of the trials this call failed. At most one look per
        ``interval`` seconds; ``force`` looks now."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError

        if not force and time.monotonic() - self.checked < self.interval:
            return []
        self.checked = time.monotonic()
        now = time.time()
        storage = study._storage
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # The later of its last beat and its start: a retry carries its dead parent's last beat (a copy of
            # every system attribute) until its own first one, and is not stale for it.
            beats = [float(trial.system_attrs.get(HEARTBEAT_ATTR, "-inf"))]
            if trial.datetime_start is not None:
                beats.append(trial.datetime_start.timestamp())
            last = max(beats)
            if last == float("-inf") or now - last <= self.grace_period:
                continue
            try:
                storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another worker failed it first (or it just finished)
            except Exception as exc:  # the proxy reports the same race as a remote error
                log.debug("stale trial %s not failed here: %s", trial.number, exc)
                continue
            failed.append(trial.number)
            if self.max_retry > 0:
                from .durable import RetryStale

                RetryStale(self.max_retry)(study, storage.get_trial(trial._trial_id))
        return failed

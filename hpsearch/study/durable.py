"""Durable trials, the study side: a trial's checkpoints (:mod:`hpsearch.finetune.durable` writes them) in the
study's artifact store, the newest one named on the trial, found again by its retry on whatever worker takes it, and
removed once the trial is over; a trial stopped by a signal retried, so that the same command, or any worker,
continues it.

- **Where.** Optuna's artifact store of the study (``--artifacts``; default beside an SQLite or journal file, else
  ``./hpsearch-artifacts``; on a cluster a directory every worker mounts, or ``s3://`` / ``gs://``), the location
  recorded on the study. A checkpoint is written whole, then named on its trial (the system attribute
  :data:`~hpsearch.study.record.CHECKPOINT`), then the one before it is removed: one per running trial.
- **Retries.** A retry, Optuna's for a dead worker's trial (:class:`RetryStale`) or :func:`retry_stopped` for a
  trial stopped by SIGTERM or SIGINT, copies the trial's system attributes, the checkpoint's name with them, and its
  reports (one curve for the pruner). The retry downloads that checkpoint and continues from it; one it cannot
  reach (a local store on another machine) or cannot continue from starts from step 0 and says why.
- **The end.** A trial that completes, is pruned or fails for good removes its checkpoint (the one it inherited
  too); one that stops for a retry leaves it for the retry. A dead trial whose retries are used up has its
  checkpoint removed by the worker that finds it dead.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna

from . import record
from .artifacts import open_store

FILENAME = "checkpoint.safetensors"


class Durable:
    """A run's checkpoints: the study's artifact ``store`` at ``location``, a trial saved at least every ``every_s``
    seconds of training (and at every report, and on a signal)."""

    def __init__(self, store: Any, location: str, every_s: float) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0 (0 turns checkpoints off: no Durable), got {every_s!r}")
        self.store, self.location, self.every_s = store, location, every_s

    def for_trial(self, trial: optuna.Trial) -> TrialCheckpoints:
        return TrialCheckpoints(self, trial)


class TrialCheckpoints:
    """One trial's checkpoints: the one it inherited from the trial it continues (if any), then its own."""

    def __init__(self, durable: Durable, trial: optuna.Trial) -> None:
        self.durable, self.trial = durable, trial
        frozen = trial.storage.get_trial(trial._trial_id)
        inherited = frozen.system_attrs.get(record.CHECKPOINT)
        self.inherited: dict[str, Any] | None = json.loads(inherited) if inherited else None
        self.current = self.inherited
        """The newest checkpoint of the trial's line: the inherited one until the trial saves its own."""
        self.saved = 0
        self._tmp: tempfile.TemporaryDirectory | None = None

    def durability(self) -> Any:
        """What the loop needs: how to save, how often, and the inherited checkpoint downloaded (when it can be)."""
        from ..finetune.durable import Durability

        resume = None
        if self.inherited is not None:
            resume = self._fetch(self.inherited)
        forked = record.FORK_OF in self.trial.storage.get_trial(self.trial._trial_id).system_attrs
        return Durability(save=self.save, every_s=self.durable.every_s, resume=resume, fork=forked)

    def _fetch(self, pointer: dict[str, Any]) -> Path | None:
        """The checkpoint ``pointer`` names, downloaded; None (the reason recorded) when it cannot be reached."""
        location = pointer["location"]
        reason = None
        if not location.startswith(("s3://", "gs://")) and not Path(location).is_dir():
            reason = f"its store {location} is not on this machine ({_host()})"
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="hpsearch-resume-")
            path = Path(self._tmp.name) / FILENAME
            try:
                optuna.artifacts.download_artifact(artifact_store=open_store(location),
                                                   artifact_id=pointer["artifact_id"], file_path=str(path))
                return path
            except Exception as exc:  # gone, unreadable, a store that does not answer: start over, saying why
                reason = f"it could not be read from {location} ({type(exc).__name__}: {str(exc)[:160]})"
        self.trial.set_user_attr(record.RESUME_REFUSED, f"trial {pointer['trial']}'s checkpoint at step "
                                                        f"{pointer['step']}: {reason}; started from step 0")
        return None

    def save(self, write: Callable[[Path], None], summary: dict[str, Any]) -> None:
        """Write a checkpoint with ``write``, name it on the trial once whole, then remove the one before. A store
        that fails (a full disk, a read-only directory) keeps the one before; why is recorded on the trial."""
        store, artifact_id = self.durable.store, str(uuid.uuid4())
        try:
            with tempfile.TemporaryDirectory(prefix="hpsearch-checkpoint-") as tmp:
                path = Path(tmp) / FILENAME
                write(path)
                size = path.stat().st_size
                with open(path, "rb") as f:
                    store.write(artifact_id, f)
        except (OSError, RuntimeError) as exc:  # OSError: disk full or read-only; safetensors says RuntimeError
            _remove(store, artifact_id)
            why = f"step {summary['step']}: {getattr(exc, 'strerror', None) or exc}"
            self.trial.set_user_attr(record.CHECKPOINT_ERROR, why[:300])
            print(f"[hpsearch] trial {self.trial.number}: checkpoint not written ({why}); the one before stays",
                  file=sys.stderr, flush=True)
            return
        pointer = {"artifact_id": artifact_id, "location": self.durable.location, "trial": self.trial.number,
                   "saved_at": time.time(), "bytes": size, **summary}
        self.trial.storage.set_trial_system_attr(self.trial._trial_id, record.CHECKPOINT, json.dumps(pointer))
        before, self.current = self.current, pointer
        self.saved += 1
        if before is not None:
            forget(before)

    def end(self, resumed: dict[str, Any], continued: bool) -> None:
        """The trial's run is over: record where it resumed from; remove the newest checkpoint unless the trial is
        ``continued`` by a retry; drop the downloaded copy."""
        if resumed and "refused" in resumed:
            self.trial.set_user_attr(record.RESUME_REFUSED, f"trial {self.inherited['trial']}'s checkpoint at "
                                                            f"step {self.inherited['step']}: {resumed['refused']}; "
                                                            f"started from step 0")
        elif resumed and self.inherited is not None:
            self.trial.set_user_attr(record.RESUMED_FROM, {**resumed, "trial": self.inherited["trial"],
                                                           "saved_at": self.inherited["saved_at"]})
        if self.saved:
            self.trial.set_user_attr(record.CHECKPOINTS_SAVED, self.saved)
        if not continued and self.current is not None:
            forget(self.current)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def forget(pointer: dict[str, Any] | str | None) -> None:
    """Remove the checkpoint ``pointer`` names (a JSON text too), if its store is here and holds it."""
    if isinstance(pointer, str):
        pointer = json.loads(pointer)
    if not pointer:
        return
    location = pointer["location"]
    if not location.startswith(("s3://", "gs://")) and not Path(location).is_dir():
        return  # another machine's store: its own workers clean it
    try:
        _remove(open_store(location), pointer["artifact_id"])
    except Exception:  # noqa: BLE001 - a store that cannot be opened here: nothing to remove from it
        pass


def _remove(store: Any, artifact_id: str) -> None:
    try:
        store.remove(artifact_id)
    except Exception:  # noqa: BLE001 - gone already, never written, or a store that refuses: it stays
        pass


def retry_stopped(study: optuna.Study, trial: optuna.Trial) -> int:
    """Enqueue the continuation of ``trial``, which a signal (or its fused group) stopped: a waiting trial with its
    parameters, its system attributes (its newest checkpoint's name among them) and its reports, which the next
    ``ask`` of any worker takes. Not counted against ``--max-retry``: a stopped trial made progress and saved it.
    Returns the new trial's number."""
    frozen = trial.storage.get_trial(trial._trial_id)
    system = {k: v for k, v in frozen.system_attrs.items() if k != record.HEARTBEAT}
    system.setdefault("failed_trial", frozen.number)
    template = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=frozen.params,
                                         distributions=frozen.distributions, system_attrs=system,
                                         intermediate_values=frozen.intermediate_values)
    storage = trial.storage
    return storage.get_trial_number_from_id(storage.create_new_trial(study._study_id, template_trial=template))


class RetryStale:
    """The retry of a dead worker's trial (Optuna's ``RetryHeartbeatStaleTrialCallback``, its reports inherited),
    up to ``max_retry`` times; the checkpoint of a trial not retried any more is removed."""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry,
                                                             inherit_intermediate_values=True)(study, trial)
        if len(trial.system_attrs.get("retry_history", [])) + 1 > self.max_retry:
            forget(trial.system_attrs.get(record.CHECKPOINT))


def _host() -> str:
    import socket

    return socket.gethostname()


def fork(study: optuna.Study, source: optuna.trial.FrozenTrial, changes: dict[str, float]) -> int:
    """Enqueue a new trial that continues ``source``'s newest checkpoint with ``changes`` to its hyperparameters
    (some of :data:`~hpsearch.finetune.durable.FORKABLE`, each a searched parameter of the study, within its
    range): the ground of population-based training, not a user feature yet. The fork owns a copy of the
    checkpoint (the source may end and remove its own). Returns the fork's number."""
    from ..finetune.durable import FORKABLE

    not_forkable = [k for k in changes if k not in FORKABLE]
    if not_forkable:
        raise ValueError(f"a fork changes {', '.join(FORKABLE)} only, not {', '.join(not_forkable)}")
    not_searched = [k for k in changes if k not in source.distributions]
    if not_searched:
        raise ValueError(f"a fork changes searched parameters only; {', '.join(not_searched)} is fixed here")
    pointer = source.system_attrs.get(record.CHECKPOINT)
    if not pointer:
        raise ValueError(f"trial {source.number} has no checkpoint to fork")
    pointer = json.loads(pointer)
    store = open_store(pointer["location"])
    artifact_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="hpsearch-fork-") as tmp:
        path = Path(tmp) / FILENAME
        optuna.artifacts.download_artifact(artifact_store=store, artifact_id=pointer["artifact_id"],
                                           file_path=str(path))
        with open(path, "rb") as f:
            store.write(artifact_id, f)
    system = {record.CHECKPOINT: json.dumps({**pointer, "artifact_id": artifact_id}),
              record.FORK_OF: {"trial": source.number, "changes": changes}}
    template = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params={**source.params, **changes},
                                         distributions=source.distributions, system_attrs=system,
                                         intermediate_values=source.intermediate_values)
    storage = study._storage
    return storage.get_trial_number_from_id(storage.create_new_trial(study._study_id, template_trial=template))

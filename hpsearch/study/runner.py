"""The study runner: everything between a validated space and ``study.optimize``.

Order matters for "nothing written on bad input": the model config, tokenizer and data are all checked
and prepared before the storage is touched, and a resume that would change the study's direction or
metric is refused before any attribute is written.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import optuna

from .. import interrupts
from ..config.options import RunOptions
from ..config.space import Space
from ..errors import UsageError
from . import record
from .resilient import RETRY_S, resilient, ride_out, unavailable
from .samplers import build_pruner, build_sampler
from .storage import retry_transient, study_lock

if TYPE_CHECKING:  # the training side is imported when a run prepares, so that the runner's loop imports light
    from ..finetune.recipe import Prepared

MAX_CONSECUTIVE_FAILURES = 10
WARM_START_TOP = 3
"""How many of an earlier study's best configs ``--warm-start`` enqueues."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def open_study(storage: Any, name: str, space: Space, warn: Any = None, warm_start: str | None = None) -> optuna.Study:
    """Create the study or resume it; refuse a resume that changes direction or metric (UsageError).

    The resolved config is stored on the study under its id and each trial records the id it ran with
    (:mod:`hpsearch.study.record`), so export knows exactly what ran even if a later resume changed fixed values.
    ``warm_start`` names an earlier study in the same storage whose best configs are enqueued first.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    seeds = warm_start_params(storage, warm_start, space) if warm_start else []
    return retry_transient(lambda: _open_study(storage, name, space, warn, seeds))


def warm_start_params(storage: Any, source: str, space: Space, top: int = WARM_START_TOP) -> list[dict]:
    """The searched params of ``source``'s ``top`` best completed trials, as this space can take them.

    The earlier study may have searched other parameters or ranges (another dataset or model): parameters this
    space does not search are dropped, values outside its ranges or choices are left to the sampler, and
    duplicates are enqueued once. Its direction must match this study's.
    """
    if source not in optuna.get_all_study_names(storage):
        raise UsageError(f"--warm-start {source}: no such study in this storage")
    earlier = optuna.load_study(study_name=source, storage=storage)
    if record.is_multi(earlier):
        raise UsageError(f"--warm-start {source}: warm starts take the best configs of single-objective studies")
    if earlier.direction.name.lower() != space.study.direction:
        raise UsageError(f"--warm-start {source}: it {earlier.direction.name.lower()}s, this study "
                         f"{space.study.direction}s {space.study.metric}")
    out: list[dict] = []
    for t in record.by_value(earlier):
        params = {k: v for k, v in t.params.items() if k in space.params and _admits(space.params[k], v)}
        if params and params not in out:
            out.append(params)
        if len(out) == top:
            break
    return out


def _admits(spec: dict, value: Any) -> bool:
    if spec["type"] == "categorical":
        return value in spec["choices"]
    return spec["low"] <= value <= spec["high"]


def _open_study(storage: Any, name: str, space: Space, warn: Any, seeds: list[dict]) -> optuna.Study:
    directions = list(space.study.all_directions)
    direction, metric = ", ".join(directions), ", ".join(space.study.objectives)
    config_id = space.fingerprint()
    if name in optuna.get_all_study_names(storage):
        existing = optuna.load_study(study_name=name, storage=storage)
        old_metric = ", ".join(record.objectives(existing)) if existing.user_attrs.get(record.METRIC) else None
        old_direction = ", ".join(d.name.lower() for d in existing.directions)
        if old_direction != direction or (old_metric is not None and old_metric != metric):
            raise UsageError(
                f"study {name!r} exists with direction={old_direction}, metric={old_metric}; this space asks for "
                f"direction={direction}, metric={metric}. Resume with the same metric, or pass a new --study-name.")
        old_id = record.latest_config_id(existing)
        if old_id and old_id != config_id:
            changed = config_changes(record.stored_config(existing, old_id) or {}, space.to_dict())
            warn(f"note: resuming study {name!r} with a changed config ({', '.join(changed[:8]) or 'details'}); "
                 f"each trial keeps the config it ran with")
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=build_sampler(space), pruner=build_pruner(space), load_if_exists=True)
    record.store_config(study, config_id, space.to_dict(), space.study.metric, list(space.study.metrics))
    for params in [*space.study.enqueue, *seeds]:
        study.enqueue_trial(params, skip_if_exists=True)
    _describe_for_dashboard(study, space)
    return study


def _describe_for_dashboard(study: optuna.Study, space: Space) -> None:
    """Name the objective after the metric and put the resolved config in the study's dashboard note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(space.study.objectives))
    try:
        import optuna_dashboard
    except ImportError:
        return
    from ..config.files import dump_yaml

    body = f"## hpsearch config `{space.fingerprint()}`\n\n```yaml\n{dump_yaml(space.to_dict())}```\n"
    optuna_dashboard.save_note(study, body)


class _NoTraceback(logging.Filter):
    """Optuna's warning for a failed trial in one line: its message names the error, and the traceback it attaches
    (an interrupt, a storage outage, a metric function's exception) is the worker's business, which says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def quiet_optuna() -> None:
    """Optuna's log at warnings, each a line without a traceback (on every handler of its logger)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoTraceback) for f in handler.filters):
            handler.addFilter(_NoTraceback())


def prepare_run(space: Space, device: str, weights: bool = True) -> Prepared:
    """Everything checked and loaded before the storage is touched: the recipe's preparation (device, model checks,
    tokenized data, pretrained weights) and what the study section asks of the data."""
    from ..finetune.recipe import prepare

    quiet_optuna()
    prepared = prepare(space, device, weights=weights)
    confirm = space.study.confirm
    n = len(prepared.data.train)
    if confirm and n // (confirm.folds + 1) < 1:
        raise UsageError(f"study.confirm.folds: {confirm.folds} folds need more than {n} training rows (each "
                         f"fold moves a block of them to validation)")
    return prepared


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def budget(study: optuna.Study, liveness: Any = None) -> tuple[int, int]:
    """(finished, running) trial counts, after failing trials whose worker stopped sending heartbeats (Optuna's
    on an RDB storage, ``liveness``'s on a journal or gRPC one)."""
    if liveness is not None:
        liveness.fail_stale(study)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial becomes FAIL, and is retried
    trials = study.get_trials(deepcopy=False, states=FINISHED + (optuna.trial.TrialState.RUNNING,))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def run_study(space: Space, options: RunOptions, progress: Any = None) -> optuna.Study | None:
    """Prepare model and data, open (or resume) the study ``options.study_name`` in ``options.storage`` (a resolved
    URL), and run trials in this process.

    ``options.trials`` caps the trials this process runs; ``options.total`` stops once the study as a whole has
    that many finished (complete or pruned) trials, counting other workers' running trials, so several workers
    share one budget without overshooting. ``keep_best`` keeps the weights of the study's best K trials in the
    artifact store (:mod:`hpsearch.study.artifacts`); ``warm_start`` enqueues an earlier study's best; ``mlflow``
    (a tracking URI) logs every trial this process runs as an MLflow run (:mod:`hpsearch.study.tracking`).

    In a trial's process group (``--gpus-per-trial``: WORLD_SIZE > 1), rank 0 runs the study and the other ranks
    follow it (:func:`hpsearch.study.objective.follow`) and return None.
    """
    from ..finetune.distributed import join
    from .objective import follow

    prepared = prepare_run(space, options.device)
    group = join(prepared.device)
    if group is not None:
        if not group.main:  # rank 0 talks to the study; this rank trains what it sends
            with interrupts.handled():
                follow(space, prepared, group)
            group.close()
            return None
    try:
        return _lead(space, options, prepared, group, progress)
    finally:
        if group is not None:
            _release(group)


def _release(group: Any) -> None:
    """Tell the other ranks the study run is over (when they can still hear it) and leave the group."""
    from ..finetune.distributed import GroupLost

    try:
        group.broadcast(None)
    except GroupLost:
        pass
    group.close()


def _lead(space: Space, options: RunOptions, prepared: Prepared, group: Any, progress: Any) -> optuna.Study:
    """The study side of :func:`run_study`: this process alone, or rank 0 of a trial's process group."""
    from ..config.metrics import MetricFailed
    from . import storage as st
    from .objective import BudgetReached, Objective
    from .progress import make_progress
    from .storage import liveness_for, open_storage

    url = options.storage
    interval = options.heartbeat_interval or st.HEARTBEAT_INTERVAL
    retries = st.MAX_RETRY if options.max_retry is None else options.max_retry
    shown, window = st.redact(url), storage_window(options)
    opened = ride_out(lambda: open_storage(url, heartbeat_interval=interval, grace_period=options.grace_period,
                                           max_retry=retries), shown, window)
    storage = resilient(opened, shown, window)
    liveness = liveness_for(storage, url, interval, options.grace_period, retries)
    study = open_study(storage, options.study_name or space.name, space, warm_start=options.warm_start)
    confirm = space.study.confirm
    keep_best = options.keep_best
    # Until the confirmation has chosen, keep the weights of every trial it may choose.
    keeper = make_keeper(study, url, max(keep_best, confirm.top_k) if keep_best and confirm else keep_best,
                         options.artifacts)
    progress = progress or make_progress(options.quiet)
    if options.fuse:
        from ..finetune.recipe import fuser_for

        fuser = fuser_for(space, prepared, options.fuse)
    else:
        fuser = None
    durable = make_durable(study, url, options.checkpoint_every_s, options.artifacts)
    objective = Objective(space, prepared, progress, config_id=space.fingerprint(), total=options.total,
                          keeper=keeper, liveness=liveness, group=group, fuser=fuser, durable=durable)
    n_trials, total = options.trials, options.total
    planned = n_trials if total is None else max(0, min(n_trials or 10**9, total - sum(budget(study, liveness))))
    progress.study_started(study, planned, space.study.metric)
    callbacks: list[Any] = [progress] if keeper is None else [progress, lambda study, trial: keeper.prune(study)]
    if options.mlflow:
        from .tracking import MLflowLogger

        callbacks.append(MLflowLogger(options.mlflow, space.study.metric))
    if options.wandb is not None:
        from .wandb_tracking import WandbLogger

        callbacks.append(WandbLogger(options.wandb, space.study.metric))
    callbacks.append(interrupts.stop_study)
    kwargs = {"timeout": options.timeout, "callbacks": callbacks, "catch": (BudgetReached, MetricFailed)}
    deadline = None if options.timeout is None else time.monotonic() + options.timeout
    settle_memory()
    try:
        with interrupts.handled():  # Ctrl-C / SIGTERM stop the running trial at its next step (FAIL), then the study
            interrupts.check()  # one held while a worker set up stops it before any trial
            if fuser is None and total is None:
                study.optimize(objective, n_trials=n_trials, **kwargs)
            else:
                lock = lambda: study_lock(url, study.study_name)  # noqa: E731
                with asking(study, Tickets(n_trials), total, liveness, lock):
                    if fuser is not None:
                        _run_fused(options.fuse, study, objective, total, kwargs, poll=interval, deadline=deadline)
                    else:
                        _run_to_total(study, objective, kwargs, poll=interval, deadline=deadline)
    except Exception as exc:
        outage = unavailable(exc)  # Optuna's own follow-on errors (its finally after a failed tell) hide it
        if outage is None:
            raise
        raise outage from None
    finally:
        progress.close()
        unsettle_memory()
    if confirm:
        from .confirm import confirm_top

        say = None if options.quiet else lambda msg: print(msg, file=sys.stderr)
        confirm_top(study, space, prepared, say=say)
        if keeper is not None:
            keeper.k = keep_best
            keeper.prune(study)
    return study


def settle_memory() -> None:
    """Collect once, then exempt everything alive (modules, the pretrained weights, the tokenized data) from later
    collections while the study runs: each trial ends with a collection that frees its model at once, which
    otherwise walks every object of torch and transformers again (16 tiny-BERT trials: 14.6-15.9 s against
    19.7-19.9 s, about 0.3 s a trial on a 2-core EPYC, 2026-12-05)."""
    import gc

    gc.collect()
    gc.freeze()


def unsettle_memory() -> None:
    """Hand what :func:`settle_memory` exempted back to the collector when the study ends, so that a process that
    runs several studies (the Python API, the test suite) frees what the earlier ones left."""
    import gc

    gc.unfreeze()
    gc.collect()


def storage_window(options: RunOptions) -> float:
    """How long this worker rides out a storage outage (``--storage-retry-s``)."""
    return RETRY_S if options.storage_retry_s is None else options.storage_retry_s


def make_keeper(study: optuna.Study, storage_url: str, keep_best: int | None, artifacts: str | None) -> Any:
    """The ModelKeeper for ``--keep-best K`` (None without it); its store's location is recorded on the study."""
    if not keep_best:
        return None
    from .artifacts import ModelKeeper, open_store
    from .storage import artifact_location

    location = artifact_location(study, storage_url, artifacts)
    return ModelKeeper(open_store(location), location, keep_best)


def make_durable(study: optuna.Study, storage_url: str, every_s: float | None, artifacts: str | None) -> Any:
    """Checkpoints of every trial in the study's artifact store (:mod:`hpsearch.study.durable`), saved at least every
    ``every_s`` seconds of training (``--checkpoint-every-s``; None: the default; 0: None, trials are not saved)."""
    from ..finetune.durable import CHECKPOINT_EVERY_S

    every_s = CHECKPOINT_EVERY_S if every_s is None else every_s
    if every_s == 0:
        return None
    from .artifacts import open_store
    from .durable import Durable
    from .storage import artifact_location

    location = artifact_location(study, storage_url, artifacts)
    return Durable(open_store(location), location, every_s)


class Tickets:
    """How many more trials this worker may start (``--trials``; None: no limit), taken one at a time by however
    many threads run its trials."""

    def __init__(self, n: int | None) -> None:
        self.left, self._lock = n, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left is None:
                return True
            if self.left <= 0:
                return False
            self.left -= 1
            return True


class NoRoom(Exception):
    """Asked for a trial while the study's finished and running trials make its ``--total``: wait (a running trial
    may still fail and need a retry), then ask again."""


class NoMore(Exception):
    """Asked for a trial once the study has its ``--total`` finished trials, or this worker its ``--trials``."""


@contextmanager
def asking(study: optuna.Study, tickets: Tickets, total: int | None = None, liveness: Any = None,
           lock: Callable[[], Any] = nullcontext) -> Iterator[None]:
    """While the block runs, ``study.ask`` (what ``study.optimize`` calls) creates a trial only when this worker
    may start one: a ticket of ``--trials`` is left and, with a ``total``, the study's finished plus running
    trials leave room (else :class:`NoRoom` or :class:`NoMore`, raised before any trial exists).

    Counting and creating are one step: under a lock this process's threads share (two threads asking at once on
    SQLite, which has no row locks, can also take one enqueued trial twice) and ``lock``, the one every worker of
    the study shares (:func:`hpsearch.study.storage.study_lock`). Counted apart, two askers that both saw room
    for one more trial created two: the fused members of a group finish together, so a group asked past the
    total in one run in three (issue #41). The study handed back to the caller asks as Optuna's does."""
    ask, local = study.ask, threading.Lock()

    def gated(*args: Any, **kwargs: Any) -> optuna.Trial:
        with local, lock():
            if total is not None:
                finished, running = budget(study, liveness)
                if finished >= total:
                    raise NoMore()
                if finished + running >= total:
                    raise NoRoom()
            if not tickets.take():
                raise NoMore()
            return ask(*args, **kwargs)

    study.ask = gated  # type: ignore[method-assign]
    try:
        yield
    finally:
        del study.ask  # the class's method again


def _run_fused(k: int, study: optuna.Study, objective: Any, total: int | None, kwargs: dict, poll: float,
               deadline: float | None = None) -> None:
    """Run the trials of a fused group (``--fuse K``): K threads, each one member at a time, asking for the next
    trial as soon as its member leaves (within :func:`asking`), until ``total``, the trials of ``--trials`` or
    ``deadline``. An error that stops one member's thread (not a trial's failure) stops the others at their next
    step, each recording why, and is raised here."""
    errors: list[BaseException] = []

    def member() -> None:
        try:
            _run_to_total(study, objective, kwargs, poll, deadline)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the main thread
            errors.append(exc)
            if not isinstance(exc, KeyboardInterrupt):
                interrupts.stop_all(f"stopped with its fused group: {_said(exc)}")

    threads = [threading.Thread(target=member, name=f"hpsearch-member-{i}", daemon=True) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)  # short waits, so that a signal's handler runs in the main thread
    if errors:
        first = next((e for e in errors if not isinstance(e, KeyboardInterrupt)), errors[0])
        if not isinstance(first, KeyboardInterrupt):
            interrupts.clear()
        raise first


def _said(exc: BaseException) -> str:
    """An error in a line: its type and first line."""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_to_total(study: optuna.Study, objective: Any, kwargs: dict, poll: float,
                  deadline: float | None = None) -> None:
    """Run trials one at a time until :func:`asking` says there are no more (the study's total, this worker's
    tickets) or ``deadline`` passes.

    When the running trials of other workers would complete the budget, wait for them instead of exiting:
    if one of those workers dies, its trial goes stale, is failed and retried, and this worker runs it.
    """
    failures = 0
    mine: list[optuna.trial.FrozenTrial] = []  # this worker's trials: with others on the study, not the study's last
    kwargs = {**kwargs, "callbacks": [*kwargs["callbacks"], lambda study, trial: mine.append(trial)]}
    while True:
        interrupts.check()  # held while waiting for other workers' trials, or stopped after the last trial
        if deadline is not None and time.monotonic() > deadline:
            return
        try:
            study.optimize(objective, n_trials=1, **kwargs)
        except NoRoom:
            time.sleep(min(poll, 5.0))
            continue
        except NoMore:
            return
        last = mine[-1]
        failures = failures + 1 if record.failed(last) else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise UsageError(f"{failures} trials failed in a row (see their fail_reason); stopping")

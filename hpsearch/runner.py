"""The study runner: everything between a validated space and ``study.optimize``.

Order matters for "nothing written on bad input": the model config, tokenizer and data are all checked
and prepared before the storage is touched, and a resume that would change the study's direction or
metric is refused before any attribute is written.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
import warnings
from typing import Any

import numpy as np
import optuna

from . import __version__, interrupts
from .errors import UsageError
from .schema import PRUNERS, SAMPLERS
from .seeding import WorkerSeededSampler
from .space import Space
from .validation import check_layers, check_lora_targets, uses_lora
from .storage import retry_transient

CONFIG_ATTR = "config:"
MAX_CONSECUTIVE_FAILURES = 10
WARM_START_TOP = 3
"""How many of an earlier study's best configs ``--warm-start`` enqueues."""


def grid_search_space(params: dict) -> dict[str, list]:
    """The explicit value lists GridSampler needs: choices, or every step of an int/float range."""
    grid = {}
    for name, spec in params.items():
        if spec["type"] == "categorical":
            grid[name] = list(spec["choices"])
        elif spec["type"] == "int":
            grid[name] = list(range(spec["low"], spec["high"] + 1, spec.get("step", 1)))
        else:
            n = int(round((spec["high"] - spec["low"]) / spec["step"])) + 1
            grid[name] = [float(v) for v in np.linspace(spec["low"], spec["low"] + (n - 1) * spec["step"], n)]
    return grid


def build_sampler(space: Space) -> optuna.samplers.BaseSampler:
    """The sampler the space names, with its options and seed.

    A seeded sampler is a ``WorkerSeededSampler``: each process sharing the study (workers, a resumed run) draws
    its own sequence, the one that runs trial 0 the seed's. QMC keeps one seed everywhere: its processes share
    one low-discrepancy sequence, indexed through the study."""
    cfg = space.study["sampler"]
    cls = getattr(optuna.samplers, SAMPLERS[cfg["name"]])

    def build(seed: int | None) -> optuna.samplers.BaseSampler:
        options = dict(cfg["options"])
        if cfg["name"] == "grid":
            options["search_space"] = grid_search_space(space.params)
        if seed is not None:
            options["seed"] = seed
        with warnings.catch_warnings():  # gp and qmc are "experimental" in Optuna: the user chose them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**options)

    if cfg["seed"] is None or cfg["name"] == "qmc":
        return build(cfg["seed"])
    return WorkerSeededSampler(build, cfg["seed"])


def build_pruner(space: Space) -> optuna.pruners.BasePruner:
    """The pruner the space names, with its options (``none`` never prunes).

    ``n_warmup_steps: W`` keeps Optuna's meaning, no pruning until a trial has made more than W reports: Optuna's
    pruners compare it with the step index, which counts from 0 in Optuna's examples and from 1 in hpsearch (report
    k comes after k / reports_per_epoch epochs, also for Hyperband's resources), so it is passed on as W + 1.
    """
    return _pruner(space.study["pruner"])


def _pruner(cfg: dict) -> optuna.pruners.BasePruner:
    cls = getattr(optuna.pruners, PRUNERS[cfg["name"]])
    if cfg["name"] == "patient":
        wrapped = _pruner(cfg["wrapped"]) if cfg.get("wrapped") else None
        with warnings.catch_warnings():  # PatientPruner is "experimental" in Optuna: chosen knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(wrapped, **cfg["options"])
    options = dict(cfg["options"])
    if "n_warmup_steps" in options:  # Optuna counts steps from 0; hpsearch's reports are numbered from 1
        options["n_warmup_steps"] += 1
    return cls(**options)


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

    The resolved config is stored as study user attribute ``config:<id>`` and each trial records the
    ``config_id`` it ran with, so export knows exactly what ran even if a later resume changed fixed values.
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
    if earlier.direction.name.lower() != space.study["direction"]:
        raise UsageError(f"--warm-start {source}: it {earlier.direction.name.lower()}s, this study "
                         f"{space.study['direction']}s {space.study['metric']}")
    done = earlier.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done.sort(key=lambda t: t.value, reverse=space.study["direction"] == "maximize")
    out: list[dict] = []
    for t in done:
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
    direction, metric = space.study["direction"], space.study["metric"]
    config_id = space.fingerprint()
    if name in optuna.get_all_study_names(storage):
        existing = optuna.load_study(study_name=name, storage=storage)
        old_metric = existing.user_attrs.get("metric")
        old_direction = existing.direction.name.lower()
        if old_direction != direction or (old_metric is not None and old_metric != metric):
            raise UsageError(
                f"study {name!r} exists with direction={old_direction}, metric={old_metric}; this space asks for "
                f"direction={direction}, metric={metric}. Resume with the same metric, or pass a new --study-name.")
        old_id = existing.user_attrs.get("config_id")
        if old_id and old_id != config_id:
            old = existing.user_attrs.get(CONFIG_ATTR + old_id, {})
            changed = config_changes(old, space.to_dict())
            warn(f"note: resuming study {name!r} with a changed config ({', '.join(changed[:8]) or 'details'}); "
                 f"each trial keeps the config it ran with")
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                sampler=build_sampler(space), pruner=build_pruner(space), load_if_exists=True)
    study.set_user_attr(CONFIG_ATTR + config_id, space.to_dict())
    study.set_user_attr("config_id", config_id)
    study.set_user_attr("metric", metric)
    study.set_user_attr("hpsearch_version", __version__)
    for params in [*space.study["enqueue"], *seeds]:
        study.enqueue_trial(params, skip_if_exists=True)
    _describe_for_dashboard(study, space)
    return study


def _describe_for_dashboard(study: optuna.Study, space: Space) -> None:
    """Name the objective after the metric and put the resolved config in the study's dashboard note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([space.study["metric"]])
    try:
        import optuna_dashboard
    except ImportError:
        return
    from .spacefile import dump_yaml

    body = f"## hpsearch config `{space.fingerprint()}`\n\n```yaml\n{dump_yaml(space.to_dict())}```\n"
    optuna_dashboard.save_note(study, body)


def trial_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    """The resolved config a trial ran with (falls back to the study's latest)."""
    attrs = study.user_attrs
    config_id = trial.user_attrs.get("config_id") or attrs.get("config_id")
    config = attrs.get(CONFIG_ATTR + str(config_id))
    if config is None:
        raise UsageError(f"study {study.study_name!r} carries no hpsearch config: was it made by hpsearch run?")
    return config


def prepare_run(space: Space, device: str, weights: bool = True) -> tuple[Any, Any]:
    """Everything checked and loaded before the storage is touched: device, layer count, tokenized data,
    and (``weights``) the pretrained weights, read into memory once for all of this process's trials."""
    from .data import prepare
    from .model import layer_count, linear_module_names, load_tokenizer, preload
    from .training import resolve_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dev = resolve_device(device)
    model_cfg = space.config["model"]
    check_layers(space, layer_count(model_cfg))
    data = prepare(space.config["data"], load_tokenizer(model_cfg), model_cfg["max_length"])
    if uses_lora(space):
        check_lora_targets(space, linear_module_names(model_cfg, data))
    confirm = space.study.get("confirm")
    if confirm and len(data.train) // (confirm["folds"] + 1) < 1:
        raise UsageError(f"study.confirm.folds: {confirm['folds']} folds need more than {len(data.train)} training "
                         f"rows (each fold moves a block of them to validation)")
    if weights:
        preload(model_cfg, data)
    return dev, data.to(dev)  # on a GPU the whole tokenized set stays resident


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


def run_study(space: Space, *, storage_url: str, n_trials: int | None, study_name: str | None = None,
              device: str = "auto", quiet: bool = False, timeout: float | None = None, total: int | None = None,
              heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int | None = None,
              progress: Any = None, keep_best: int | None = None, artifacts: str | None = None,
              warm_start: str | None = None, mlflow: str | None = None) -> optuna.Study:
    """Prepare model and data, open (or resume) the study, and run trials in this process.

    ``n_trials`` caps the trials this process runs; ``total`` stops once the study as a whole has that many
    finished (complete or pruned) trials, counting other workers' running trials, so several workers share
    one budget without overshooting. ``keep_best`` keeps the weights of the study's best K trials in the
    artifact store at ``artifacts`` (:mod:`hpsearch.artifacts`); ``warm_start`` enqueues an earlier study's best;
    ``mlflow`` (a tracking URI) logs every trial this process runs as an MLflow run (:mod:`hpsearch.tracking`).
    """
    from . import storage as st
    from .objective import BudgetReached, Objective, TrialFailed
    from .progress import make_progress
    from .storage import liveness_for, open_storage

    dev, data = prepare_run(space, device)
    interval = heartbeat_interval or st.HEARTBEAT_INTERVAL
    retries = st.MAX_RETRY if max_retry is None else max_retry
    storage = open_storage(storage_url, heartbeat_interval=interval, grace_period=grace_period, max_retry=retries)
    liveness = liveness_for(storage, storage_url, interval, grace_period, retries)
    study = open_study(storage, study_name or space.name, space, warm_start=warm_start)
    confirm = space.study.get("confirm")
    # Until the confirmation has chosen, keep the weights of every trial it may choose.
    keeper = make_keeper(study, storage_url, max(keep_best, confirm["top_k"]) if keep_best and confirm else keep_best,
                         artifacts)
    progress = progress or make_progress(quiet)
    objective = Objective(space, data, dev, progress, config_id=space.fingerprint(), total=total, keeper=keeper,
                          liveness=liveness)
    planned = n_trials if total is None else max(0, min(n_trials or 10**9, total - sum(budget(study, liveness))))
    progress.study_started(study, planned, space.study["metric"])
    callbacks: list[Any] = [progress] if keeper is None else [progress, lambda study, trial: keeper.prune(study)]
    if mlflow:
        from .tracking import MLflowLogger

        callbacks.append(MLflowLogger(mlflow, space.study["metric"]))
    callbacks.append(interrupts.stop_study)
    kwargs = {"timeout": timeout, "callbacks": callbacks, "catch": (TrialFailed, BudgetReached)}
    try:
        with interrupts.handled():  # Ctrl-C / SIGTERM stop the running trial at its next step (FAIL), then the study
            if total is None:
                study.optimize(objective, n_trials=n_trials, **kwargs)
            else:
                _run_to_total(study, objective, total, n_trials, timeout, kwargs, poll=interval, liveness=liveness)
    finally:
        progress.close()
    if confirm:
        from .confirm import confirm_top

        confirm_top(study, space, data, dev, say=None if quiet else lambda msg: print(msg, file=sys.stderr))
        if keeper is not None:
            keeper.k = keep_best
            keeper.prune(study)
    return study


def make_keeper(study: optuna.Study, storage_url: str, keep_best: int | None, artifacts: str | None) -> Any:
    """The ModelKeeper for ``--keep-best K`` (None without it); its store's location is recorded on the study."""
    if not keep_best:
        return None
    from .artifacts import LOCATION_ATTR, ModelKeeper, default_location, open_store

    location = artifacts or study.user_attrs.get(LOCATION_ATTR) or default_location(storage_url)
    if not location.startswith(("s3://", "gs://")):
        location = str(Path(location).expanduser().resolve())
    keeper = ModelKeeper(open_store(location), location, keep_best)
    if study.user_attrs.get(LOCATION_ATTR) != location:
        study.set_user_attr(LOCATION_ATTR, location)
    return keeper


def _run_to_total(study: optuna.Study, objective: Any, total: int, n_trials: int | None, timeout: float | None,
                  kwargs: dict, poll: float, liveness: Any = None) -> None:
    """Run trials until the study has ``total`` finished ones (or this worker's ``n_trials`` or ``timeout``).

    When the running trials of other workers would complete the budget, wait for them instead of exiting:
    if one of those workers dies, its trial goes stale, is failed and retried, and this worker runs it.
    """
    ran, failures = 0, 0
    mine: list[optuna.trial.FrozenTrial] = []  # this worker's trials: with others on the study, not the study's last
    kwargs = {**kwargs, "callbacks": [*kwargs["callbacks"], lambda study, trial: mine.append(trial)]}
    deadline = None if timeout is None else time.monotonic() + timeout
    while n_trials is None or ran < n_trials:
        interrupts.check()  # held while waiting for other workers' trials, or stopped after the last trial
        if deadline is not None and time.monotonic() > deadline:
            return
        finished, running = budget(study, liveness)
        if finished >= total:
            return
        if finished + running >= total:
            time.sleep(min(poll, 5.0))
            continue
        study.optimize(objective, n_trials=1, **kwargs)
        ran += 1
        last = mine[-1]
        skipped = str(last.user_attrs.get("status", "")).startswith("skipped")
        failures = failures + 1 if last.state == optuna.trial.TrialState.FAIL and not skipped else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise UsageError(f"{failures} trials failed in a row (see their fail_reason); stopping")

"""What hpsearch stores on an Optuna study, and how it reads it back: every attribute name, written once here.

On the study (user attributes): ``config:<id>`` holds each resolved config a run used, ``config_id`` the latest id,
``metric`` the metric the study optimizes, ``hpsearch_version``, ``artifacts`` the store of kept models
(``--keep-best``), and ``confirm:<trial number>`` a trial's confirmation on cross-validation folds
(``study.confirm``). On each trial: ``config_id``, ``hyperparameters`` (searched and fixed), ``status``, the
metrics of the evaluation it reports as ``val_<metric>``, where it was pruned or why it failed, and what training
measured. Every name is here except those of the measurements (steps, times, throughput, memory), whose one home
is the table :mod:`hpsearch.config.measurements`.

Ranking lives here too: :func:`ranked_trials` is the one "best first" (the study's direction, confirmed trials
ahead by their confirmed score), which ``export``, ``report``, ``--keep-best`` and the CLI's summary all follow.
"""
from __future__ import annotations

from typing import Any

import optuna

from ..config import measurements
from ..errors import UsageError
from ..version import __version__

# Study attributes.
CONFIG_PREFIX = "config:"
CONFIG_ID = "config_id"
METRIC = "metric"
METRICS = "metrics"
"""Study attribute of a multi-objective study: its objectives by name, in the order of each trial's ``values``."""
VERSION = "hpsearch_version"
ARTIFACTS = "artifacts"
CONFIRM_PREFIX = "confirm:"

# Trial attributes that more than one module writes or reads.
HYPERPARAMETERS = "hyperparameters"
STATUS = "status"
FAIL_REASON = "fail_reason"
PRUNED_AT_REPORT = "pruned_at_report"
PRUNED_AT_EPOCH = "pruned_at_epoch"
MODEL_KEPT = "model_kept"
KEEP_ERROR = "keep_error"
RETRY_OF = "retry_of"
DEVICE = "device"
VALIDATION_ROWS = "validation_rows"
"""How many validation rows the trial's final evaluation scored (a metric's standard error depends on it)."""
TEST_SCORES = "test_scores"
"""Study attribute: {trial number: metrics on data.test}, written when ``export --model`` scores a kept model."""
WORKER = "worker"
"""Which process ran the trial: ``HOST:PID``."""
GPU = "gpu"
"""The GPU a worker was placed on (its CUDA_VISIBLE_DEVICES), when the launcher or the user set one."""
GPU_MEMORY_FRACTION = "gpu_memory_fraction"
"""The worker's cap on that GPU's memory when it shared the GPU (``--trials-per-gpu``)."""
EPOCHS_COMPLETED = measurements.EPOCHS_COMPLETED.name
PEAK_MEMORY_MB = measurements.PEAK_MEMORY.name
PRECISION = "precision"
"""What ``model.precision`` resolved to for the trial (fp32, bf16-mixed ...)."""
CUDA_GRAPHS = "cuda_graphs"
"""With ``model.cuda_graphs``: on and how many step shapes were captured, or why it was off."""
PRECISION_REASON = "precision_reason"
"""Why: asked for by the space, or what ``auto`` weighed on the trial's device."""
FUSED_GROUP = "fused_group"
"""With ``--fuse``: the fused group the trial trained in (``host:pid/group``); its members shared every pass."""
HEARTBEAT = "hpsearch:heartbeat"
"""Trial system attribute holding the time (seconds since the epoch) of its worker's last beat, on storages whose
heartbeats are hpsearch's (:mod:`hpsearch.study.liveness`)."""
CHECKPOINT = "hpsearch:checkpoint"
"""Trial system attribute: where the trial's newest checkpoint is (:mod:`hpsearch.study.durable`); a retry inherits
it with the trial's other system attributes, and so finds what to continue from."""
FORK_OF = "hpsearch:fork_of"
"""Trial system attribute of a fork (:func:`hpsearch.study.durable.fork`): the trial whose checkpoint it continues,
and the hyperparameters it changed."""
RESUMED_FROM = "resumed_from"
"""Where a retried trial continued from: the stopped trial's number and the step, report and epochs it had saved."""
RESUME_REFUSED = "resume_refused"
"""Why a retried trial started from step 0 although its parent had saved a checkpoint."""
CHECKPOINT_ERROR = "checkpoint_error"
"""Why a trial's last checkpoint could not be written (the one before it stays)."""
CHECKPOINTS_SAVED = "checkpoints_saved"
"""How many checkpoints the trial wrote."""
STOPPED_FOR_RETRY = "retried_as"
"""On a trial stopped by a signal (or with its fused group): the number of the waiting trial that continues it."""
VAL_PREFIX = "val_"
FAILED = "failed"
"""How a status starts for a trial that did not finish: ``failed: out of memory``, ``failed: interrupted`` ..."""


def continued(trials: list[optuna.trial.FrozenTrial]) -> dict[int, optuna.trial.FrozenTrial]:
    """Trials that a later one continued from their checkpoint (by number: the continuation), so that a table or a
    plot shows each such line as one trial, with one curve (the continuation's, its reports inherited)."""
    by_number = {t.number: t for t in trials}
    out = {}
    for t in trials:
        resumed = t.user_attrs.get(RESUMED_FROM)
        if resumed and resumed.get("trial") in by_number:
            out[resumed["trial"]] = t
    return out


def resumed_note(trial: optuna.trial.FrozenTrial) -> str:
    """``#3@120``: the trial this one continued, and the step it continued from ('' when it did not)."""
    resumed = trial.user_attrs.get(RESUMED_FROM)
    return f"#{resumed['trial']}@{resumed['step']}" if resumed else ""


def constraint(reason: str) -> str:
    """The constraint a trial that failed for ``reason`` violates (``out_of_memory``, ``non_finite_loss``)."""
    return reason.replace(" ", "_").replace("-", "_")


SKIPPED = "skipped"
"""How the status of a trial starts that was closed untrained because other workers filled the budget."""


def failed(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial did not finish, whatever its state (a config failure is PRUNED so that samplers learn; a
    FAIL trial that was only skipped for the budget did not fail)."""
    status = str(trial.user_attrs.get(STATUS, ""))
    return status.startswith(FAILED) or (trial.state == optuna.trial.TrialState.FAIL
                                         and not status.startswith(SKIPPED))

COMPLETE = optuna.trial.TrialState.COMPLETE


def val(metric: str) -> str:
    """The trial attribute holding ``metric`` of the evaluation the trial reports (``val_accuracy``)."""
    return VAL_PREFIX + metric


def study_metric(study: optuna.Study) -> str:
    """The metric the study optimizes, as its first run recorded it ("value" for a study hpsearch did not make)."""
    return study.user_attrs.get(METRIC, "value")


def maximizes(study: optuna.Study) -> bool:
    """Whether larger values are better in ``study`` (its first objective's, with several)."""
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def better(study: optuna.Study, a: float | None, b: float) -> bool:
    """Whether value ``a`` beats value ``b`` in ``study``'s direction (None beats nothing)."""
    if a is None:
        return False
    return a > b if maximizes(study) else a < b


# ---------------------------------------------------------------------------------------------------------------
# The configs a study ran.


def store_config(study: optuna.Study, config_id: str, config: dict, metric: str,
                 metrics: list[str] | None = None) -> None:
    """Record a run's resolved config under its id, make it the latest, and name the metric (the objectives, when
    there are several: the metric is then the first) and the version."""
    study.set_user_attr(CONFIG_PREFIX + config_id, config)
    study.set_user_attr(CONFIG_ID, config_id)
    study.set_user_attr(METRIC, metrics[0] if metrics else metric)
    if metrics:
        study.set_user_attr(METRICS, list(metrics))
    study.set_user_attr(VERSION, __version__)


def stored_config(study: optuna.Study, config_id: str | None) -> dict | None:
    """The config stored under ``config_id`` (None when there is none)."""
    return study.user_attrs.get(CONFIG_PREFIX + str(config_id)) if config_id else None


def latest_config_id(study: optuna.Study) -> str | None:
    """The id of the config the study's last run used."""
    return study.user_attrs.get(CONFIG_ID)


def trial_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    """The resolved config a trial ran with (falls back to the study's latest)."""
    config = stored_config(study, trial.user_attrs.get(CONFIG_ID) or latest_config_id(study))
    if config is None:
        raise UsageError(f"study {study.study_name!r} carries no hpsearch config: was it made by hpsearch run?")
    return config


# ---------------------------------------------------------------------------------------------------------------
# Confirmations (study.confirm: hpsearch.study.confirm).


def confirm_key(number: int) -> str:
    """The study attribute of trial ``number``'s confirmation."""
    return f"{CONFIRM_PREFIX}{number}"


def confirmation(study: optuna.Study, number: int) -> dict | None:
    """The stored confirmation of trial ``number`` (``values``, ``score``, ``seconds``), or None."""
    record = study.user_attrs.get(confirm_key(number))
    return record if record and "score" in record else None


def confirmations(study: optuna.Study) -> dict[int, dict]:
    """Every finished confirmation of the study, by trial number."""
    out = {}
    for key, record in study.user_attrs.items():
        if key.startswith(CONFIRM_PREFIX) and isinstance(record, dict) and "score" in record:
            out[int(key[len(CONFIRM_PREFIX):])] = record
    return out


def claimed(study: optuna.Study, number: int) -> bool:
    """Whether some worker has claimed (or finished) trial ``number``'s confirmation."""
    return confirm_key(number) in study.user_attrs


# ---------------------------------------------------------------------------------------------------------------
# Best first.


def value(trial: optuna.trial.FrozenTrial) -> float | None:
    """A trial's value: its one objective's, or in a multi-objective study its first objective's (``values``
    holds them all)."""
    return None if trial.values is None else trial.values[0]


def is_multi(study: optuna.Study) -> bool:
    """Whether the study has several objectives (``study.metrics``)."""
    return len(study.directions) > 1


def objectives(study: optuna.Study) -> list[str]:
    """The study's objectives by name, in ``values`` order."""
    return list(study.user_attrs.get(METRICS) or [study_metric(study)])


def by_value(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials, best value first."""
    done = study.get_trials(deepcopy=False, states=(COMPLETE,))
    return sorted(done, key=value, reverse=maximizes(study))


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials, best first: those confirmed on cross-validation folds by their confirmed score, then
    the others by value, each in the study's direction."""
    sign = -1.0 if maximizes(study) else 1.0
    if is_multi(study):  # the Pareto front (feasible trials only), by its first objective
        return sorted(study.best_trials, key=lambda t: sign * t.values[0])
    confirmed = confirmations(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(COMPLETE,)) if feasible(t)]
    return sorted(done, key=lambda t: (t.number not in confirmed,
                                       sign * (confirmed[t.number]["score"] if t.number in confirmed else t.value)))


def standard_error(trial: optuna.trial.FrozenTrial, value: float | None, proportion: bool) -> float | None:
    """The standard error of a proportion metric's ``value`` over the trial's validation rows (None when the
    metric is not a share of rows or the row count is unknown)."""
    n = trial.user_attrs.get(VALIDATION_ROWS)
    if not proportion or not n or value is None or not 0.0 <= value <= 1.0:
        return None
    return (value * (1.0 - value) / n) ** 0.5


def within_noise(best: float, se_best: float | None, value: float, se: float | None) -> bool | None:
    """Whether ``value`` is within two standard errors of the difference from ``best`` (None: unknown)."""
    if se_best is None or se is None:
        return None
    return abs(best - value) <= 2.0 * (se_best**2 + se**2) ** 0.5


def test_scores(study: optuna.Study) -> dict[int, dict[str, float]]:
    """The data.test metrics ``export --model`` recorded, by trial number."""
    return {int(k): v for k, v in (study.user_attrs.get(TEST_SCORES) or {}).items()}


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial meets every constraint (``study.constraints``; Optuna's rule: each value <= 0). An
    infeasible trial is never a study's best, exported or kept."""
    return all(v <= 0 for v in trial.constraints.values())


def rank_of_new(study: optuna.Study, value: float) -> int:
    """Where a trial completing now with ``value`` (not confirmed yet) would stand in :func:`ranked_trials`: the
    number of completed trials ranked ahead of it. Ties go to the earlier trial, as the ranking's stable sort puts
    them (a tie that counted as ahead of nothing would save a model that the pruning then removes at once)."""
    confirmed = confirmations(study)
    return sum(t.number in confirmed or t.value == value or better(study, t.value, value)
               for t in study.get_trials(deepcopy=False, states=(COMPLETE,)) if feasible(t))


def best_trials(study: optuna.Study, k: int = 1) -> list[optuna.trial.FrozenTrial]:
    """The k best completed trials, best first; a UsageError when there is none."""
    ranked = ranked_trials(study)
    if not ranked:
        summary = ", ".join(f"{n} {s.lower()}" for s, n in state_counts(study).items()) or "no trials"
        raise UsageError(f"study {study.study_name!r} has no completed trial yet ({summary}); run more trials first")
    return ranked[:k]


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name (COMPLETE, PRUNED, ...), in the order the states first occur."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def shown_value(trial: optuna.trial.FrozenTrial, metric: str) -> Any:
    """A trial's value, or for a pruned or failed one the metric of its last evaluation (None if it made none)."""
    return value(trial) if trial.values is not None else trial.user_attrs.get(val(metric))

"""The Optuna objective: one trial = suggest hyperparameters, fine-tune, report, prune, record.

A trial that fails for its config (out of memory, a non-finite loss) is recorded PRUNED with its status ``failed:
...`` and a violated constraint (Optuna's ``trial.set_constraint``), so that the sampler learns from it: Optuna's
samplers skip FAIL trials and would propose the same config again. Anything else that raises stops the worker.

Everything a person looking at a trial in optuna-dashboard wants is stored as user attributes: the
metrics of the evaluation it reports (its best checkpoint or its last, per ``study.trial_value``), times,
throughput, device, steps and epochs completed, its best checkpoint and whether it stopped early, where it was
pruned or why it failed, and peak memory.
"""
from __future__ import annotations

import gc
import math
import os
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import optuna
import torch

from .. import interrupts
from ..config.conditions import parse
from ..config.measurements import LATENCY, MEASUREMENTS, OBJECTIVES, PEAK_MEMORY
from ..config.metrics import MetricFailed
from ..config.placement import MEMORY_FRACTION_ENV
from ..config.space import Space
from ..config.vocabulary import Hyperparameters
from ..errors import HpsearchError
from ..finetune.device import peak_memory_mb
from ..finetune.distributed import Group, GroupLost
from ..finetune.fused import Fuser, private
from ..finetune.recipe import Prepared, fine_tune, inference_latency_ms
from ..finetune.state import Callback, NonFiniteLoss, TrainingState
from ..interrupts import check as check_interrupt
from . import record
from .progress import Progress

if TYPE_CHECKING:
    from .artifacts import ModelKeeper
    from .durable import Durable
    from .liveness import Liveness


class BudgetReached(HpsearchError):
    """Other workers filled the study's --total while this trial was being created: it is closed untrained."""


LIVE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


def start_trial(trial: optuna.Trial, total: int | None, liveness: Liveness | None = None) -> None:
    """Before a trial trains: fail dead workers' trials (``liveness``, on storages without Optuna's heartbeats),
    check the shared budget, and note a retry, from one read of the study's trials.

    Trial numbers are unique and ordered: the first ``total`` live trials own the budget; a later one (created
    while other workers filled it) yields without training.
    """
    if liveness is not None:  # a dead worker's trial: FAIL, and retried (Optuna does this on RDB storages)
        liveness.fail_stale(trial.study)
    trials = trial.study.get_trials(deepcopy=False)
    if total is not None:
        ahead = [t for t in trials if t.number < trial.number and t.state in LIVE]
        if len(ahead) >= total:
            trial.set_user_attr(record.STATUS, f"{record.SKIPPED}: the study reached --total {total} (other workers)")
            raise BudgetReached(f"trial {trial.number} skipped: budget of {total} reached")
    me = next((t for t in trials if t.number == trial.number), None)
    if me is not None and "failed_trial" in me.system_attrs:  # retry of a trial whose worker died
        trial.set_user_attr(record.RETRY_OF, me.system_attrs["failed_trial"])


ALLOCATION_ERRORS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                     "CUBLAS_STATUS_NOT_INITIALIZED")
"""Messages of the RuntimeErrors a GPU raises when memory runs out outside the caching allocator (cuBLAS and cuDNN
workspaces): the trial failed for memory, as with ``torch.cuda.OutOfMemoryError``."""


def finite(name: str, value: float, study: Any = None) -> float:
    """``value`` of metric ``name``, which must be a finite number for Optuna to rank it; else MetricFailed, saying
    when a built-in metric is undefined (:attr:`hpsearch.tasks.base.Metric.undefined`)."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    from ..tasks import all_metrics

    known = all_metrics().get(name)
    why = f": undefined here ({known.undefined})" if known is not None and known.undefined else ""
    raise MetricFailed(f"{name} is {value}{why}")


METRIC_FAILURES_TO_STOP = 3
"""Trials whose metric failed, with none completed, after which a worker stops (one line, exit 1)."""


class OverTime(RuntimeError):
    """A trial's training passed the ``train_time_s`` bound of ``study.constraints``: stopped there, infeasible."""


def failure_reason(exc: BaseException) -> str | None:
    """``out of memory``, ``non-finite loss`` or ``over time`` for a trial that failed for its config; None for
    anything else."""
    if isinstance(exc, NonFiniteLoss):
        return "non-finite loss"
    if isinstance(exc, OverTime):
        return "over time"
    if isinstance(exc, torch.cuda.OutOfMemoryError) or any(m in str(exc) for m in ALLOCATION_ERRORS):
        return "out of memory"
    return None


def _let_go(exc: BaseException) -> None:
    """Clear the locals of the finished frames an exception's traceback holds (the loop's model, optimizer,
    checkpoint copy, activations), so that they are freed now and not when a garbage collection happens to run:
    Optuna keeps the exception in a frame that its own traceback refers to, a cycle only the collector breaks."""
    traceback.clear_frames(exc.__traceback__)


class _Reporter(Callback):
    """Forwards evaluations to Optuna (report + prune) and progress to the live view."""

    def __init__(self, trial: optuna.Trial, metric: str, progress: Progress,
                 time_limit: float | None = None, multi: bool = False) -> None:
        self.trial = trial
        self.metric = metric
        self.progress = progress
        self.state: TrainingState | None = None
        self.metrics: dict[str, float] = {}
        self.time_limit = time_limit
        """Seconds of training after which the trial stops as infeasible (a ``train_time_s`` constraint)."""
        self.multi = multi
        """Whether the study has several objectives (no intermediate reports, no pruning)."""
        self.started = time.perf_counter()
        self.reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)
        """The reports the trial holds already (a retry's, inherited from the trial it continues)."""

    def on_step(self, state: TrainingState) -> None:
        self.state = state
        self.progress.trial_step(self.trial.number, state.step, state.total_steps)
        if self.time_limit is not None:
            trained = time.perf_counter() - self.started - state.setup_time - state.eval_time
            if trained > self.time_limit:
                raise OverTime(f"trained {trained:.0f} s, past the constraint train_time_s <= {self.time_limit:g}")

    def on_evaluate(self, state: TrainingState, metrics: dict[str, float]) -> None:
        self.state, self.metrics = state, metrics
        self.progress.trial_evaluated(self.trial.number, float(state.loss), metrics)  # read here, at a report
        if self.multi:  # Optuna takes intermediate values (and prunes) for single-objective studies only
            return
        value = finite(self.metric, metrics[self.metric], self.trial.study)
        if state.report not in self.reported:  # a retry inherits its parent's reports: one curve, each step once
            self.trial.report(value, state.report)
        final = state.step == state.total_steps
        if not final and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at report {state.report} ({state.epochs_completed:.2f} epochs)")


def measured(state: TrainingState | None, device: torch.device) -> dict[str, Any]:
    """Every measurement of :data:`hpsearch.config.measurements.MEASUREMENTS` the trial got to make, as it is
    stored: the training loop's (none before its first step), and the device's peak memory. (``latency_ms`` is
    measured after training, only for an objective that lists it.)"""
    out: dict[str, Any] = {}
    for m in MEASUREMENTS:
        if m.source == "training" and state is not None:
            out[m.name] = m.stored(getattr(state, m.field))
    out[PEAK_MEMORY.name] = PEAK_MEMORY.stored(peak_memory_mb(device))
    return out


def worker_name() -> str:
    """This process as trials record it (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _placement() -> dict[str, Any]:
    """Which process this is, and the GPU and memory share the launcher gave it
    (:func:`hpsearch.config.placement.place`), where set."""
    out: dict[str, Any] = {record.WORKER: worker_name()}
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        out[record.GPU] = os.environ["CUDA_VISIBLE_DEVICES"]
    if os.environ.get(MEMORY_FRACTION_ENV):
        out[record.GPU_MEMORY_FRACTION] = os.environ[MEMORY_FRACTION_ENV]
    return out


def follow(space: Space, prepared: Prepared, group: Group) -> int:
    """A rank other than 0 of a trial's process group: train each trial rank 0 sends, until it sends None (the
    study run is over); return the number of trials trained. A signal held here stops after the trial."""
    trials = 0
    from ..finetune.durable import Durability

    while True:
        sent = group.broadcast()
        if sent is None:
            return trials
        hp, resume = sent
        model = None
        try:  # rank 0 writes the trial's checkpoints; this rank continues from the one rank 0 continues from
            durability = Durability(save=lambda write, where: None, every_s=float("inf"), resume=resume)
            model, result = fine_tune(space, hp, prepared, group=group, durability=durability)
            print(f"[hpsearch] rank {group.rank}: trial ended at step {result.steps}", file=sys.stderr, flush=True)
        finally:
            del model
            gc.collect()
            if prepared.device.type == "cuda":
                torch.cuda.empty_cache()
        trials += 1
        check_interrupt()


class Objective:
    """Callable for ``study.optimize``: fine-tunes one model per trial on data prepared once."""

    def __init__(self, space: Space, prepared: Prepared, progress: Progress | None = None,
                 config_id: str | None = None, total: int | None = None, keeper: ModelKeeper | None = None,
                 liveness: Liveness | None = None, group: Group | None = None, fuser: Fuser | None = None,
                 durable: Durable | None = None) -> None:
        self.space = space
        self.prepared = prepared
        self.device = prepared.device
        self.progress = progress or Progress()
        self.config_id = config_id or space.fingerprint()
        self.metric = space.study.metric
        self.objectives: list[str] = list(space.study.metrics)
        """A multi-objective study's objectives (``study.metrics``); empty with one."""
        self.constraints = [parse(text)[0] for text in space.study.constraints]
        """``study.constraints``: each trial's measurements against them go to Optuna as constraint values."""
        self.time_limit = min((c.value for c in self.constraints if c.name == "train_time_s" and c.op in ("<=", "<")),
                              default=None)
        self.total = total
        self.keeper = keeper
        self.liveness = liveness
        """hpsearch's heartbeats, on storages Optuna gives none (journal, gRPC proxy); None elsewhere."""
        self.group = group
        """The trial's process group (``--gpus-per-trial``): this process is its rank 0 and sends each trial's
        hyperparameters to the other ranks (:func:`follow`)."""
        self.fuser = fuser
        """The fused group whose members this objective's trials are (``--fuse``: a thread per member, each
        calling this objective); None: one trial at a time."""
        self.durable = durable
        """Where trials save their checkpoints and find their parents' (:mod:`hpsearch.study.durable`); None: off."""
        self.completed, self.metric_failures = 0, 0
        """Trials this objective completed, and those whose metric failed (:meth:`_metric_failed`)."""
        self._counting = threading.Lock()

    def __call__(self, trial: optuna.Trial) -> float:
        if self.liveness is None:
            return self._run(trial)
        with self.liveness.pulse(trial.storage, trial._trial_id):
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float:
        start_trial(trial, self.total, self.liveness)
        hp = self.space.suggest(trial)
        trial.set_user_attr(record.CONFIG_ID, self.config_id)
        values = hp.as_dict()
        off = self.space.inactive(values)
        trial.set_user_attr(record.HYPERPARAMETERS, {k: v for k, v in values.items() if k not in off})
        if self.fuser is not None:
            trial.set_user_attr(record.FUSED_GROUP, f"{worker_name()}/{self.fuser.id}")
            threading.current_thread().name = f"trial {trial.number}"  # how the group's errors name this member
        self.progress.trial_started(trial.number, trial.params)
        reporter = _Reporter(trial, self.metric, self.progress, time_limit=self.time_limit,
                             multi=bool(self.objectives))
        model, continued = None, False
        checkpoints = self.durable.for_trial(trial) if self.durable is not None else None
        durability = checkpoints.durability() if checkpoints is not None else None
        try:
            check_interrupt()  # a signal held while Optuna sampled: this trial is the interrupted one
            if self.group is not None:  # the other ranks continue from the same checkpoint (one machine)
                self.group.broadcast((hp, durability.resume if durability is not None else None))
            model, result = fine_tune(self.space, hp, self.prepared, callback=reporter, group=self.group,
                                      fuser=self.fuser, durability=durability)
            value = (finite(self.metric, result.metrics[self.metric]) if not self.objectives else
                     self._values(trial, model, result, reporter))
            feasible = self._record(trial, reporter, status="completed", final=result.metrics,
                                    selection=result.selection)
            if self.keeper is not None and feasible:
                self._keep(trial, model, hp, result, value)
        except MetricFailed as exc:  # the trial is FAIL with the reason; the study goes on unless every trial fails
            self._record(trial, reporter, status="failed: metric")
            trial.set_user_attr(record.FAIL_REASON, str(exc)[:300])
            self._metric_failed(str(exc))
            _let_go(exc)
            raise
        except optuna.TrialPruned as exc:
            self._record(trial, reporter, status="pruned")
            s = reporter.state
            trial.set_user_attr(record.PRUNED_AT_REPORT, s.report if s else 0)
            trial.set_user_attr(record.PRUNED_AT_EPOCH, round(s.epochs_completed, 4) if s else 0.0)
            _let_go(exc)
            raise
        except KeyboardInterrupt as exc:  # saved at its step: FAIL, and continued by the retry enqueued here
            self._record(trial, reporter, status=f"failed: {interrupts.reason(exc)}")
            continued = self._retry(trial)
            _let_go(exc)
            raise
        except GroupLost as exc:  # not the config's failure: FAIL, continued by a retry, and this group stops
            self._record(trial, reporter, status=f"failed: {exc}")
            continued = self._retry(trial)
            _let_go(exc)
            raise
        except (NonFiniteLoss, torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            reason = failure_reason(exc)
            if reason is None:  # a bug, not a trial's failure: the worker stops with its traceback
                raise
            self._record(trial, reporter, status=f"failed: {reason}")
            detail = f"{reason}: {str(exc).splitlines()[0][:300]}"
            trial.set_user_attr(record.FAIL_REASON, detail)
            # Optuna's samplers never look at a FAIL trial, so TPE would propose this config again: the trial is
            # PRUNED with a violated constraint instead, which TPE ranks below every feasible trial.
            trial.set_constraint(record.constraint(reason), 1.0)
            _let_go(exc)
            raise optuna.TrialPruned(f"trial {trial.number} failed: {detail}") from None
        finally:
            if checkpoints is not None:
                checkpoints.end(durability.resumed, continued)
            del model
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        with self._counting:
            self.completed += 1
        return value

    def _retry(self, trial: optuna.Trial) -> bool:
        """Enqueue the continuation of a trial a signal (or its group) stopped; return whether one was."""
        from .durable import retry_stopped

        try:
            trial.set_user_attr(record.STOPPED_FOR_RETRY, retry_stopped(trial.study, trial))
        except Exception as exc:  # noqa: BLE001 - a storage gone with the signal: the config is on the FAIL trial
            print(f"[hpsearch] trial {trial.number}: its continuation could not be enqueued ({exc})",
                  file=sys.stderr, flush=True)
            return False
        return True

    def _metric_failed(self, reason: str) -> None:
        """Count a trial whose metric failed; when every trial so far failed so (:data:`METRIC_FAILURES_TO_STOP` of
        them, none completed), the study stops with that reason in one line: a metric that fails on every
        config is a bug to fix, not a region to learn."""
        with self._counting:
            self.metric_failures += 1
        if not self.completed and self.metric_failures >= METRIC_FAILURES_TO_STOP:
            raise HpsearchError(f"every trial so far ({self.metric_failures}) failed the same way: {reason}; "
                                f"fix the metric and run the same command again")

    def _values(self, trial: optuna.Trial, model: torch.nn.Module, result: Any, reporter: _Reporter) -> list[float]:
        """Each of ``study.metrics``: an evaluated metric, or a measurement of the trained model or its training
        (``latency_ms`` is measured here, and recorded as an attribute)."""
        out = []
        for name in self.objectives:
            m = OBJECTIVES.get(name)
            if m is None:
                out.append(float(finite(name, result.metrics[name])))
            elif m is LATENCY:
                latency = inference_latency_ms(model, self.prepared)
                trial.set_user_attr(LATENCY.name, LATENCY.stored(latency))
                out.append(float(latency))
            else:  # a measurement of training, unrounded
                out.append(float(getattr(reporter.state, m.field)))
        return out

    def _keep(self, trial: optuna.Trial, model: torch.nn.Module, hp: Hyperparameters, result: Any,
              value: float) -> None:
        """Offer the trained model to the keeper (``--keep-best``); a failure to store it never fails the trial."""
        from ..finetune.model import load_tokenizer
        from ..finetune.modeldir import write_model_dir

        origin = {"study": trial.study.study_name, "trial": trial.number, "value": value, "metric": self.metric}
        config = self.space.with_params(trial.params, origin=origin).to_dict()
        metrics = {"metrics": result.metrics, "hyperparameters": hp.as_dict(), "origin": origin,
                   **{k: v for k, v in result.as_dict().items() if k not in ("metrics", "history")}}
        tokenizer = load_tokenizer(self.space.model)
        if self.fuser is not None:  # merging adapters writes into the base, which the group's members share
            model = private(model)
        try:
            kept = self.keeper.offer(trial, value, lambda out: write_model_dir(out, model, tokenizer, metrics, config))
        except (OSError, HpsearchError) as exc:
            trial.set_user_attr(record.KEEP_ERROR, str(exc)[:300])
            kept = False
        trial.set_user_attr(record.MODEL_KEPT, kept)

    def _record(self, trial: optuna.Trial, reporter: _Reporter, status: str,
                final: dict[str, float] | None = None, selection: dict[str, Any] | None = None) -> bool:
        """Store what the trial measured and how it ended; return whether it met every constraint."""
        if selection and selection.get("stopped_early"):
            status += f" (stopped early at epoch {reporter.state.epochs_completed:.2f})"
        trial.set_user_attr(record.STATUS, status)
        for key, value in (selection or {}).items():
            trial.set_user_attr(key, value)
        for key, value in {record.DEVICE: str(self.device), **_placement()}.items():
            trial.set_user_attr(key, value)
        made = measured(reporter.state, self.device)
        for key, value in made.items():
            trial.set_user_attr(key, value)
        for key, value in (final or reporter.metrics).items():
            trial.set_user_attr(record.val(key), round(float(value), 6))
        trial.set_user_attr(record.PRECISION, self.prepared.precision.name)
        trial.set_user_attr(record.PRECISION_REASON, self.prepared.precision.reason)
        if reporter.state is not None and reporter.state.cuda_graphs:
            trial.set_user_attr(record.CUDA_GRAPHS, reporter.state.cuda_graphs)
        if self.prepared.data is not None:
            trial.set_user_attr(record.VALIDATION_ROWS, self.prepared.data.validation.example_count)
        return self._constrain(trial, made, trained=reporter.state is not None)

    def _constrain(self, trial: optuna.Trial, made: dict[str, Any], trained: bool) -> bool:
        """Each ``study.constraints`` bound as an Optuna constraint value (> 0: violated by that much), from what
        the trial measured. Every constraint names a measurement the objective makes (validation takes the names
        from the table); only a trial that never got to its first step lacks the training ones, and then the
        bound is left unset. Returns whether every bound is met."""
        feasible = True
        for clause in self.constraints:
            if clause.name not in made:
                if trained:
                    raise KeyError(f"constraint {clause.name}: measured by no trial (hpsearch.config.measurements)")
                continue
            value = made[clause.name]
            excess = value - clause.value if clause.op in ("<=", "<") else clause.value - value
            if clause.op in ("<", ">") and excess == 0:
                excess = 1e-9  # the bound itself breaks a strict inequality
            trial.set_constraint(f"{clause.name} {clause.op} {clause.value}", excess)
            feasible = feasible and excess <= 0
        return feasible

"""The options of a run, written once: ``hpsearch run``'s flags, ``hpsearch.run``'s keyword arguments and the
options a worker process gets are all derived from :class:`RunOptions`.

Adding an option is one field here (with its :class:`Option`: flag, help, bounds, check) plus its test; the CLI
builds its click option from it (:func:`hpsearch.cli.click_option`), the API takes it as a keyword argument and
checks it with the same rules, and ``to_workers=True`` passes it on to the worker processes of a run. Each option
is checked alone when RunOptions is made; how they go together, with the space and with the machine, is
:mod:`hpsearch.config.rules`. Messages name an option as the caller gave it (:func:`shown`): a flag on the
command line, a keyword in Python.

>>> options = RunOptions(trials=20, keep_best=3, workers=2)
>>> options.for_worker(total=40).keep_best, options.for_worker(total=40).workers
(3, None)
>>> RunOptions(trials=0)
Traceback (most recent call last):
    ...
hpsearch.errors.UsageError: trials: must be an integer >= 1, got 0
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import MISSING, UsageError


@dataclass(frozen=True)
class Option:
    """How one option is given: its flag, its help, what values it takes, and whether a worker gets it."""

    flag: str
    """The command-line flag, e.g. ``--keep-best``; the keyword argument is the field's name."""
    help: str
    """One or two sentences for ``--help`` (and the README's CLI table)."""
    kind: type = str
    """int, float, str, bool (a flag that takes no value) or tuple (a comma-separated list on the command line)."""
    low: float | None = None
    """For int and float: the smallest admissible value."""
    check: Callable[[Any], str | None] | None = None
    """What is wrong with a value beyond its kind and bound (None when nothing is)."""
    metavar: str | None = None
    """How ``--help`` shows the value."""
    flag_value: Any = MISSING
    """The value of the flag given without one (``--keep-best`` alone is 1); MISSING: a value is required."""
    cli_default: Any = MISSING
    """The CLI's default where it differs from the API's (MISSING: the same)."""
    to_workers: bool = False
    """Whether ``--workers``' processes get this option as the parent was given it."""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not admissible (None when it is); ``None`` always is (the option is not given)."""
        if value is None:
            return None
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return "must be an integer" + (f" >= {self.low:g}" if self.low is not None else "")
        if self.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                   or not math.isfinite(value)):
            return "must be a finite number" + (f" >= {self.low:g}" if self.low is not None else "")
        if self.kind is str and not isinstance(value, str):
            return "must be a string"
        if self.kind is bool and not isinstance(value, bool):
            return "must be true or false"
        if self.kind is tuple and (isinstance(value, str) or not isinstance(value, Iterable)):
            return "must be a list"
        if self.low is not None and value < self.low:
            return f"must be {'an integer' if self.kind is int else 'a number'} >= {self.low:g}"
        return self.check(value) if self.check is not None else None


def option(default: Any = None, **spec: Any) -> Any:
    """A dataclass field carrying its :class:`Option`."""
    return dataclasses.field(default=default, metadata={"option": Option(**spec)})


def check_device(value: str) -> str | None:
    """``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` (GPU number N)."""
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return None
    return "must be auto, cpu, cuda or cuda:N"


DEVICE = Option("--device", "Where trials train: the GPU when there is one (auto), or force cpu / cuda / cuda:N "
                            "(GPU number N).", check=check_device, metavar="auto|cpu|cuda|cuda:N", to_workers=True)
"""The device option, shared by ``run`` and ``train``."""


@dataclass(frozen=True)
class RunOptions:
    """What ``hpsearch run`` does with a space besides the space itself: how many trials, where the study lives,
    on which devices and in how many processes, and what it keeps. Checked on construction (a UsageError names
    the option and repeats the value); the fields are in the order ``--help`` lists them."""

    trials: int | None = option(
        flag="--trials", kind=int, low=1,
        help="Trials to run in THIS invocation; re-running the command resumes the study and adds N more.")
    total: int | None = option(
        flag="--total", kind=int, low=1,
        help="Stop once the study as a whole has N finished (complete or pruned) trials, across all workers.")
    storage: str | None = option(
        flag="--storage",
        help="Storage URL: an SQLAlchemy URL (sqlite:///x.db, postgresql://...), redis://HOST:PORT/DB (journal on "
             "Redis), journal:///x.log (journal file) or grpc://HOST:PORT (storage-proxy). Default: "
             "$HPSEARCH_STORAGE, else sqlite:///studies.db.")
    study_name: str | None = option(
        flag="--study-name", help="Study name. Default: study.name in the space file (or its stem).")
    device: str = dataclasses.field(default="auto", metadata={"option": DEVICE})
    workers: int | None = option(
        flag="--workers", kind=int, low=1,
        help="Start N local worker processes on the study, round robin over the GPUs (every visible one, or "
             "--gpus); workers sharing a GPU split its memory. Without a GPU they split the CPU cores.")
    gpus: tuple[str, ...] | None = option(
        flag="--gpus", kind=tuple, metavar="0,1,..",
        help="The GPUs workers use (CUDA_VISIBLE_DEVICES numbers); one worker per GPU unless --workers or "
             "--trials-per-gpu says more.")
    trials_per_gpu: int | None = option(
        flag="--trials-per-gpu", kind=int, low=1, metavar="K",
        help="Pack K trials on each GPU: K workers per GPU, each capped at 1/K of its memory (small models leave "
             "a GPU mostly idle; Ray Tune's gpu=1/K).")
    gpus_per_trial: int | None = option(
        flag="--gpus-per-trial", kind=int, low=1, metavar="K",
        help="Train each trial data-parallel on K GPUs (DDP; rank 0 talks to the study); with --device cpu, K "
             "processes (gloo).")
    fuse: int | None = option(
        flag="--fuse", kind=int, low=1, metavar="K", to_workers=True,
        help="Train K trials at once in each worker as one model: one forward and one backward a step for all of "
             "them, LoRA trials on one shared copy of the base weights (each trial still its own: reports, "
             "pruning, result). Pays where a trial leaves the device idle: small models, LoRA.")
    ray: str | None = option(
        flag="--ray", flag_value="", metavar="[ADDRESS]",
        help="Run the workers (--workers N, default 1) as Ray tasks on the Ray cluster at ADDRESS (without one: "
             "$RAY_ADDRESS, else a local Ray), each with a GPU (1/K of one with --trials-per-gpu K, K with "
             "--gpus-per-trial K) and --cpus-per-worker CPUs.")
    cpus_per_worker: float | None = option(
        flag="--cpus-per-worker", kind=float, low=0.01, metavar="C",
        help="CPU cores each worker gets: Ray's num_cpus with --ray (default 1); locally its threads (default: an "
             "equal share).")
    timeout: float | None = option(
        flag="--timeout", kind=float, low=1, help="Stop starting new trials after SECONDS.", to_workers=True)
    heartbeat_interval: int | None = option(
        flag="--heartbeat-interval", kind=int, low=1, to_workers=True,
        help="Seconds between a running trial's heartbeats (default 60).")
    grace_period: int | None = option(
        flag="--grace-period", kind=int, low=1, to_workers=True,
        help="Seconds without a heartbeat before a trial counts as dead: FAIL, then retried (default 180).")
    max_retry: int | None = option(
        flag="--max-retry", kind=int, low=0, to_workers=True,
        help="Times a dead worker's trial is retried with the same params (default 2).")
    storage_retry_s: float | None = option(
        flag="--storage-retry-s", kind=float, low=0, to_workers=True, metavar="SECONDS",
        help="How long a worker rides out a storage that does not answer (a database restarting or failing over, "
             "Redis unreachable) before it stops; its trial waits at its next write meanwhile (default 120, 0: "
             "stop at the first error).")
    checkpoint_every_s: float | None = option(
        flag="--checkpoint-every-s", kind=float, low=0, to_workers=True, metavar="SECONDS",
        help="Save each running trial's whole state (weights, optimizer, schedule, random states, data position) at "
             "every report and at least every SECONDS of training (default 300), and at once on SIGTERM or Ctrl-C, "
             "to the artifact store: a killed, preempted or stopped trial continues where it was, on any worker "
             "(0: off).")
    keep_best: int | None = option(
        flag="--keep-best", kind=int, low=1, flag_value=1, metavar="[K]", to_workers=True,
        help="Keep the weights of the study's K best trials (default 1) in the artifact store, removing those that "
             "drop out; 'hpsearch export --model DIR' then writes one without retraining.")
    artifacts: str | None = option(
        flag="--artifacts", metavar="DIR|s3://BUCKET|gs://BUCKET", to_workers=True,
        help="Artifact store for --keep-best. Default: beside an SQLite study file (x.db -> x-artifacts/), else "
             "./hpsearch-artifacts.")
    warm_start: str | None = option(
        flag="--warm-start", metavar="STUDY",
        help="Enqueue the best configs of an earlier study in the same storage (another dataset or model too) so "
             "that this search starts where that one ended.")
    mlflow: str | None = option(
        flag="--mlflow", flag_value="", metavar="[URI]", to_workers=True,
        help="Log every trial as an MLflow run (params, reports as steps, metrics, attributes, state) in an "
             "experiment named after the study; without URI, $MLFLOW_TRACKING_URI.")
    wandb: str | None = option(
        flag="--wandb", flag_value="", metavar="[PROJECT]", to_workers=True,
        help="Log every trial as a W&B run (config, reports as steps, summary, state as tag and exit) in PROJECT "
             "(without one: $WANDB_PROJECT, else the study's name), grouped by study.")
    quiet: bool = option(
        True, flag="--quiet", kind=bool, cli_default=False,
        help="Plain log lines instead of the live view.")
    """The CLI shows the live view unless ``--quiet``; the Python API is quiet unless given ``quiet=False``."""

    def __post_init__(self) -> None:
        if self.gpus is not None and not isinstance(self.gpus, str):
            object.__setattr__(self, "gpus", tuple(str(g).strip() for g in self.gpus if str(g).strip()) or None)
        problems = option_problems({f: getattr(self, f) for f, _ in self.fields()})
        if problems:
            error = UsageError("; ".join(problems))
            error.problems = problems  # each on its own, for a refusal that lists others beside them
            raise error

    @staticmethod
    def fields() -> list[tuple[str, Option]]:
        """Every option: (keyword argument, its Option), in ``--help`` order."""
        return [(f.name, f.metadata["option"]) for f in dataclasses.fields(RunOptions)]

    @property
    def local_workers(self) -> bool:
        """Whether trials run in worker processes (``workers``, ``gpus`` or ``trials_per_gpu`` given) rather than
        in this one; :func:`hpsearch.config.placement.place` says where each goes."""
        return ((self.workers or 1) > 1 or self.gpus is not None or self.trials_per_gpu is not None
                or self.gpus_per_trial is not None or self.ray is not None)

    def for_worker(self, total: int) -> RunOptions:
        """What a worker process of this run gets: the options marked ``to_workers``, the study, the storage and the
        shared ``total``; quiet (its launcher prefixes its lines). Placement and warm starts are the launcher's."""
        kept = {field: getattr(self, field) for field, spec in self.fields() if spec.to_workers}
        return RunOptions(**kept, storage=self.storage, study_name=self.study_name, total=total, quiet=True)

    def as_dict(self) -> dict[str, Any]:
        """By field, as ``RunOptions(**options.as_dict())`` takes them back (what a worker process receives)."""
        return {field: list(v) if isinstance(v := getattr(self, field), tuple) else v for field, _ in self.fields()}


_NAMING: contextvars.ContextVar[Callable[[str], str]] = contextvars.ContextVar("hpsearch_naming",
                                                                              default=lambda field: field)


def shown(field: str) -> str:
    """How a message names option ``field``: its flag within :func:`flag_names` (the CLI), else the keyword."""
    return _NAMING.get()(field)


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Within the block, messages name options by their flags (``--keep-best``), as the command line gave them."""
    flags = {name: spec.flag for name, spec in RunOptions.fields()}
    token = _NAMING.set(lambda field: flags.get(field, field))
    try:
        yield
    finally:
        _NAMING.reset(token)


def option_problems(values: dict[str, Any]) -> list[str]:
    """What is wrong with each of a run's option ``values`` (by field) alone: its kind, bound and check."""
    out = []
    for field, spec in RunOptions.fields():
        value = values.get(field)
        why = spec.problem(value)
        if why:
            out.append(f"{shown(field)}: {why}, got {value!r}")
    return out


def run_keywords(kwargs: dict[str, Any]) -> RunOptions:
    """RunOptions from ``hpsearch.run``'s keyword arguments; an unknown one is a UsageError naming the known ones."""
    known = [name for name, _ in RunOptions.fields()]
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, known, n=1) for k in unknown]
        said = ", ".join(f"{k} (did you mean {h[0]}?)" if h else k for k, h in zip(unknown, hints))
        raise UsageError(f"unknown option {said}; hpsearch.run takes {', '.join(known)}")
    return RunOptions(**kwargs)


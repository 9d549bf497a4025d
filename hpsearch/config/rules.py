"""The rules of a run, in one place: whether a run (or a retraining) can start, given its space, its options and
what the machine offers, decided before anything is tokenized, opened or written, with every problem gathered at
once.

:func:`decide_run` returns the :class:`Plan` (where each worker goes) or raises :class:`RunRefused` listing every
problem; :func:`decide_train` does the same for ``hpsearch train``. The facts about the machine come in as a
:class:`Machine` (:func:`hpsearch.study.machine.probe` gathers them; a test states them), so the rules are plain
code that imports no torch. A problem only the machine can answer (a missing package, an unreachable address, a
device that is not there) makes the exit code 1; any other makes it 2.

>>> from hpsearch.config.options import RunOptions
>>> problems = option_combination_problems(RunOptions(trials=1, workers=4, trials_per_gpu=2))
>>> [p.text for p in problems]
['workers 4 and trials_per_gpu 2: give one (K per GPU makes K x GPUs workers)']
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..errors import UsageError
from .conditions import parse
from .measurements import BY_NAME
from .options import RunOptions, shown
from .placement import Slot, place, place_groups, place_on_ray

if TYPE_CHECKING:
    from .space import Space

SQLITE_MAX_WORKERS = 4
"""SQLite serializes writers: several local workers work (WAL, busy timeout), a server scales further."""

EXTRAS = {"ray": "ray", "mlflow": "mlflow", "wandb": "wandb", "bitsandbytes": "qlora", "flash_attn": None}
"""The optional packages a run may need, and the extra that installs each (None: installed on its own)."""


@dataclass(frozen=True)
class RayCluster:
    """The Ray cluster ``--ray`` reached (or why it could not be reached)."""

    address: str
    """How the log names it: the address given, or "a local Ray"."""
    gpus: float = 0.0
    """The cluster's GPUs."""
    cpus: float = 0.0
    """The cluster's CPUs."""
    error: str | None = None
    """Why it could not be reached (None: connected)."""


@dataclass(frozen=True)
class Machine:
    """What the machine a run starts on offers: the facts the rules check."""

    gpus: tuple[str, ...] = ()
    """The GPUs this process can use, as CUDA_VISIBLE_DEVICES numbers them (empty: none)."""
    listed: str | None = None
    """CUDA_VISIBLE_DEVICES as this process got it (None: unset), for the messages."""
    packages: frozenset[str] = frozenset()
    """The optional packages of :data:`EXTRAS` importable here."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The variables a run's options fall back on (MLFLOW_TRACKING_URI, WANDB_PROJECT, RAY_ADDRESS)."""
    mlflow_store: str | None = None
    """Why MLflow refuses the run's tracking URI (None: it takes it, or none was asked for)."""
    ray: RayCluster | None = None
    """With ``--ray``: the cluster, connected or not (None: not asked, or Ray missing)."""


@dataclass(frozen=True)
class Problem:
    """One reason a run cannot start."""

    text: str
    """One line naming the option, key or file and the value, and what to do."""
    machine: bool = False
    """Whether only the machine stands in the way (a missing package, an unreachable address): exit 1."""


class RunRefused(UsageError):
    """Every reason a run cannot start, found before anything was written. Exit 2, or 1 when every problem is
    the machine's."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("a refusal needs at least one problem")
        self.problems = list(problems)
        self.exit_code = 1 if all(p.machine for p in problems) else 2
        super().__init__(str(self))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0].text
        return "\n".join([f"the run cannot start ({len(self.problems)} problems):"]
                         + [f"  - {p.text}" for p in self.problems])


@dataclass(frozen=True)
class Plan:
    """How a run goes, decided before it starts."""

    options: RunOptions
    """The run's options, their fallbacks resolved (the MLflow URI, the W&B project)."""
    launcher: str
    """``here`` (trials in this process), ``processes`` (a local process per slot) or ``ray`` (a Ray task per
    slot)."""
    slots: tuple[Slot, ...] = ()
    """Where each worker goes (none when the trials run here)."""


def decide_run(space: Space, options: RunOptions, machine: Machine) -> Plan:
    """The plan of ``hpsearch run``: every rule of the options together, of the options with the space, and of
    both with the machine; a :class:`RunRefused` names every problem."""
    problems = option_combination_problems(options)
    problems += space_problems(space, options)
    problems += package_problems(space, options, machine)
    launcher = "ray" if options.ray is not None else "processes" if options.local_workers else "here"
    slots: list[Slot] = []
    if launcher != "ray":  # Ray's cluster has the devices, not this machine
        problems += device_problems(space, options.device, machine)
    if not problems:
        slots, found = _slots(launcher, options, machine)
        problems += found
    if launcher != "here" and options.storage and options.storage.startswith("sqlite") \
            and len(slots) > SQLITE_MAX_WORKERS:
        problems.append(Problem(f"{shown('workers')} {len(slots)} on SQLite: use at most {SQLITE_MAX_WORKERS} "
                                f"workers on one SQLite file, or PostgreSQL ({shown('storage')} postgresql://...) "
                                f"for more"))
    if problems:
        raise RunRefused(problems)
    return Plan(_resolved(options, machine), launcher, tuple(slots))


def decide_train(space: Space, device: str, adapter_only: bool, machine: Machine) -> None:
    """The rules of ``hpsearch train``: nothing left to search, adapters to save when asked for, and a machine that
    has what the model section needs; a :class:`RunRefused` names every problem."""
    problems = []
    if space.params:
        problems.append(Problem(f"{space.source}: params {', '.join(space.params)} are still searched; export a "
                                f"trial's config with 'hpsearch export' or fix them under 'fixed:'"))
    if adapter_only and space.fixed["lora_r"] <= 0:
        problems.append(Problem(f"{space.source}: --adapter-only needs fixed.lora_r > 0 (it is "
                                f"{space.fixed['lora_r']})"))
    problems += package_problems(space, None, machine)
    problems += device_problems(space, device, machine)
    if problems:
        raise RunRefused(problems)


def option_combination_problems(options: RunOptions) -> list[Problem]:
    """How the options go together (each alone was checked when they were made)."""
    o, out = options, []

    def say(text: str) -> None:
        out.append(Problem(text))

    if o.trials is None and o.total is None:
        say(f"give {_arg('trials')} (trials in this invocation) or {_arg('total')} (finished trials in the study)")
    if o.grace_period and o.heartbeat_interval and o.grace_period <= o.heartbeat_interval:
        say(f"{shown('grace_period')} {o.grace_period}: must be longer than {shown('heartbeat_interval')} "
            f"{o.heartbeat_interval}")
    placed = [shown(k) for k, v in (("gpus", o.gpus), ("trials_per_gpu", o.trials_per_gpu)) if v]
    if placed and o.device.startswith("cuda:"):
        say(f"{shown('device')} {o.device}: with {' and '.join(placed)} each worker sees its own GPU as cuda:0; "
            f"give cuda or auto")
    if placed and o.device == "cpu":
        say(f"{shown('device')} cpu: {' and '.join(placed)} place workers on GPUs; give {shown('workers')} to "
            f"split the CPU cores")
    if o.trials_per_gpu and o.gpus_per_trial:
        say(f"{shown('trials_per_gpu')} {o.trials_per_gpu} and {shown('gpus_per_trial')} {o.gpus_per_trial}: give "
            f"one (several trials per GPU, or several GPUs per trial)")
    if o.gpus_per_trial and o.device.startswith("cuda:"):
        say(f"{shown('device')} {o.device}: with {shown('gpus_per_trial')} each rank takes its own GPU; give cuda "
            f"or auto")
    if o.ray is not None and o.gpus:
        say(f"{shown('gpus')} {','.join(o.gpus)}: with {shown('ray')} Ray gives each worker its GPUs")
    if o.trials_per_gpu and o.workers:
        say(f"{shown('workers')} {o.workers} and {shown('trials_per_gpu')} {o.trials_per_gpu}: give one (K per GPU "
            f"makes K x GPUs workers)")
    return out


def space_problems(space: Space, options: RunOptions) -> list[Problem]:
    """What the space and the run's options cannot do together."""
    study, out = space.study, []
    fsdp = space.model.distributed == "fsdp"
    if options.keep_best and study.multi:
        out.append(Problem(f"{shown('keep_best')} with study.metrics: several objectives have no K best; export the "
                           f"Pareto front's configs (hpsearch export --pareto) and retrain the one you pick"))
    if options.keep_best and fsdp and options.gpus_per_trial:
        out.append(Problem(f"{shown('keep_best')} with model.distributed: fsdp: a sharded model is not written "
                           f"whole; export the best config and retrain it (hpsearch train)"))
    if study.confirm and options.gpus_per_trial:
        out.append(Problem(f"study.confirm with {shown('gpus_per_trial')}: the confirmation folds run in one "
                           f"process; confirm the study's best afterwards without {shown('gpus_per_trial')}"))
    if fsdp and options.gpus_per_trial and options.checkpoint_every_s != 0:
        out.append(Problem(f"model.distributed: fsdp: a sharded trial is not checkpointed (each rank holds a part of "
                           f"its state), so a stopped one starts over; give {shown('checkpoint_every_s')} 0 to run "
                           f"it so, or model.distributed: ddp"))
    if fsdp and not options.gpus_per_trial:
        out.append(Problem(f"model.distributed: fsdp shards a trial over the processes of {shown('gpus_per_trial')} "
                           f"K; give it, or drop model.distributed (one process holds the whole model)"))
    if space.model.cuda_graphs and space.data.task.host_reads:
        out.append(Problem(f"model.cuda_graphs with data.task {space.data.task.name}: {space.data.task.host_reads}, "
                           f"which no CUDA graph captures; drop model.cuda_graphs"))
    if space.model.cuda_graphs and options.gpus_per_trial:
        out.append(Problem(f"model.cuda_graphs with {shown('gpus_per_trial')}: a process group's collectives are not "
                           f"captured; drop one of them"))
    out += fuse_problems(space, options)
    if options.warm_start and study.multi:
        out.append(Problem(f"{shown('warm_start')} {options.warm_start}: warm starts take the best configs of "
                           f"single-objective studies, and this one has several objectives (study.metrics)"))
    return out


def fuse_problems(space: Space, options: RunOptions) -> list[Problem]:
    """What a fused group (``--fuse K``: K trials trained as one model in one process) cannot be combined with."""
    if not options.fuse:
        return []
    out, fuse = [], f"{shown('fuse')} {options.fuse}"
    if options.gpus_per_trial:
        out.append(Problem(f"{fuse} with {shown('gpus_per_trial')}: a fused group trains in one process on one "
                           f"device; give one of them"))
    if space.model.cuda_graphs:
        out.append(Problem(f"{fuse} with model.cuda_graphs: a fused pass changes its members, and so its shapes, "
                           f"from step to step; drop one of them"))
    if space.model.quantized:
        out.append(Problem(f"{fuse} with model.quantization {space.model.quantization}: quantized bases are not "
                           f"fused yet (each member would load its own); drop one of them"))
    if space.study.deterministic:
        out.append(Problem(f"{fuse} with study.deterministic: a member's dropout masks depend on which members "
                           f"share its passes; drop one of them"))
    for name, where in _measured(space):
        if name in BY_NAME and BY_NAME[name].own_alone:
            out.append(Problem(f"{fuse} with {name} in {where}: a fused member's {name} is its group's, not its "
                               f"own (the members share every pass); search it without {shown('fuse')}"))
    return out


def _measured(space: Space) -> list[tuple[str, str]]:
    """The names ``study.metrics`` and ``study.constraints`` use, each with its key."""
    named = [(name, "study.metrics") for name in space.study.metrics]
    return named + [(parse(text)[0].name, "study.constraints") for text in space.study.constraints]


def package_problems(space: Space, options: RunOptions | None, machine: Machine) -> list[Problem]:
    """The optional packages the space and the options need, the tracking URIs they name, and the Ray cluster."""
    out = []

    def missing(package: str, what: str) -> None:
        if package not in machine.packages:
            extra = EXTRAS[package]
            how = f"pip install 'hpsearch[{extra}]'" if extra else f"pip install {package.replace('_', '-')}"
            out.append(Problem(f"{what} needs {package.replace('_', '-')}, which is not installed: {how}",
                               machine=True))

    if space.model.quantized:
        missing("bitsandbytes", f"model.quantization {space.model.quantization}")
    if space.model.attn_implementation == "flash_attention_2":
        missing("flash_attn", "model.attn_implementation flash_attention_2")
    if options is None:
        return out
    if options.mlflow is not None:
        if not (options.mlflow or machine.environ.get("MLFLOW_TRACKING_URI")):
            out.append(Problem(f"{shown('mlflow')}: give a tracking URI (e.g. sqlite:///mlflow.db or "
                               f"http://mlflow:5000) or set MLFLOW_TRACKING_URI"))
        missing("mlflow", shown("mlflow"))
        if machine.mlflow_store:
            out.append(Problem(f"{shown('mlflow')} {options.mlflow or machine.environ.get('MLFLOW_TRACKING_URI')}: "
                               f"{machine.mlflow_store}"))
    if options.wandb is not None:
        missing("wandb", shown("wandb"))
    if options.ray is not None:
        missing("ray", shown("ray"))
        if machine.ray is not None and machine.ray.error:
            out.append(Problem(f"{shown('ray')} {machine.ray.address}: cannot reach the Ray cluster: "
                               f"{machine.ray.error}", machine=True))
    return out


def device_problems(space: Space | None, device: str, machine: Machine) -> list[Problem]:
    """Whether the device the run names is there (``cuda``, ``cuda:N``), and can train what the model asks for
    (quantized weights need a CUDA GPU)."""
    out = []
    if device.startswith("cuda") and not machine.gpus:
        out.append(Problem(f"{shown('device')} {device}: no CUDA device is available ({_listed(machine)}); use "
                           f"{shown('device')} cpu or auto", machine=True))
    elif device.startswith("cuda:") and int(device.split(":")[1]) >= len(machine.gpus):
        out.append(Problem(f"{shown('device')} {device}: this machine has {len(machine.gpus)} GPU(s), numbered from "
                           f"0", machine=True))
    if space is not None and space.model.quantized and (device == "cpu" or not machine.gpus):
        where = "the device is cpu" if device == "cpu" else f"no GPU is visible ({_listed(machine)})"
        out.append(Problem(f"model.quantization {space.model.quantization}: bitsandbytes quantization needs a CUDA "
                           f"GPU ({where}); drop model.quantization to train in full or bf16 precision",
                           machine=True))
    return out


def _slots(launcher: str, options: RunOptions, machine: Machine) -> tuple[list[Slot], list[Problem]]:
    """Where each worker goes, or why it cannot go there."""
    o = options
    if launcher == "here":
        return [], []
    if launcher == "ray":
        return _ray_slots(o, machine)
    gpus = [] if o.device == "cpu" else list(machine.gpus)
    if o.gpus:
        unknown = [g for g in o.gpus if g not in machine.gpus]
        if unknown:
            return [], [Problem(f"{shown('gpus')} {','.join(o.gpus)}: {', '.join(unknown)} "
                                f"{'is' if len(unknown) == 1 else 'are'} not a GPU this machine has; "
                                f"{_visible(machine)}")]
        gpus = list(o.gpus)
    if o.trials_per_gpu and not gpus:
        return [], [Problem(f"{shown('trials_per_gpu')} {o.trials_per_gpu}: {_visible(machine)}; give "
                            f"{shown('workers')} N to split the CPU")]
    if o.gpus_per_trial:
        if gpus and len(gpus) < o.gpus_per_trial:
            return [], [Problem(f"{shown('gpus_per_trial')} {o.gpus_per_trial}: only {len(gpus)} GPU(s) visible "
                                f"({','.join(gpus)})")]
        if gpus and o.workers and o.workers * o.gpus_per_trial > len(gpus):
            return [], [Problem(f"{shown('workers')} {o.workers} with {shown('gpus_per_trial')} {o.gpus_per_trial}: "
                                f"needs {o.workers * o.gpus_per_trial} GPUs, {len(gpus)} visible ({','.join(gpus)})")]
        return place_groups(o.workers, gpus, o.gpus_per_trial), []
    return place(o.workers, gpus, o.trials_per_gpu, threads=o.cpus_per_worker), []


def _ray_slots(o: RunOptions, machine: Machine) -> tuple[list[Slot], list[Problem]]:
    """A Ray task per worker, each asking for its share: a GPU, 1/K of one with ``trials_per_gpu``, K with
    ``gpus_per_trial``, none on the CPU or on a cluster without GPUs (device auto)."""
    cluster = machine.ray or RayCluster("a local Ray")
    cpus = 1.0 if o.cpus_per_worker is None else o.cpus_per_worker
    if o.device == "cpu":
        return place_on_ray(o.workers, 0.0, cpus, None), []
    if cluster.gpus == 0 and (o.device.startswith("cuda") or o.trials_per_gpu or o.gpus_per_trial):
        asked = (f"{shown('device')} {o.device}" if o.device.startswith("cuda") else
                 f"{shown('trials_per_gpu')} {o.trials_per_gpu}" if o.trials_per_gpu else
                 f"{shown('gpus_per_trial')} {o.gpus_per_trial}")
        return [], [Problem(f"{asked} with {shown('ray')}: the Ray cluster ({cluster.address}) has no GPU",
                            machine=True)]
    gpus = float(o.gpus_per_trial) if o.gpus_per_trial else 1.0 / o.trials_per_gpu if o.trials_per_gpu else (
        1.0 if cluster.gpus > 0 else 0.0)
    # As on one machine: K per GPU makes K x GPUs workers, K GPUs per trial GPUs / K; else --workers (default 1).
    count = o.workers or (int(cluster.gpus) * o.trials_per_gpu if o.trials_per_gpu else
                          max(1, int(cluster.gpus) // o.gpus_per_trial) if o.gpus_per_trial else 1)
    return place_on_ray(count, gpus, cpus, o.trials_per_gpu), []


def _resolved(options: RunOptions, machine: Machine) -> RunOptions:
    """The options with their environment fallbacks filled in: the MLflow URI, the W&B project."""
    changes = {}
    if options.mlflow == "":
        changes["mlflow"] = machine.environ.get("MLFLOW_TRACKING_URI", "")
    if options.wandb == "":
        changes["wandb"] = machine.environ.get("WANDB_PROJECT", "")
    return replace(options, **changes) if changes else options


def _arg(field_name: str) -> str:
    """``--trials N`` on the command line, ``trials=N`` in Python."""
    name = shown(field_name)
    return f"{name} N" if name.startswith("--") else f"{name}=N"


def _listed(machine: Machine) -> str:
    return f"CUDA_VISIBLE_DEVICES={machine.listed}" if machine.listed is not None else "CUDA_VISIBLE_DEVICES unset"


def _visible(machine: Machine) -> str:
    """Which GPUs the machine has, for a message."""
    if not machine.gpus:
        return f"no GPU is visible ({_listed(machine)})"
    return f"the visible GPUs are {', '.join(machine.gpus)} ({_listed(machine)})"

"""Where a run's workers go: one :class:`Slot` per worker process, carrying its environment (the GPU it is pinned
to, its share of that GPU's memory and of the CPU threads, its rank in a trial group, what Ray gives it).

Plain data, no torch: :mod:`hpsearch.config.rules` decides the slots of a run from its options and what the
machine has, before anything is written; :mod:`hpsearch.study.launch` starts a process per slot.

>>> [s.gpu for s in place(4, ["0", "1"])], place(4, ["0", "1"])[0].memory_fraction
(['0', '1', '0', '1'], 0.5)
>>> len(place(None, ["0", "1"], per_gpu=4)), place(None, ["3"])[0].memory_fraction
(8, None)
>>> [(s.gpu, s.group, s.rank) for s in place_groups(None, ["0", "1", "2", "3"], 2)]
[('0,1', 0, 0), ('0,1', 0, 1), ('2,3', 1, 0), ('2,3', 1, 1)]
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MEMORY_FRACTION_ENV = "HPSEARCH_GPU_MEMORY_FRACTION"
"""A worker's cap on its GPU's memory, a fraction in (0, 1]: set for workers that share a GPU, applied with
``torch.cuda.set_per_process_memory_fraction`` (:func:`hpsearch.finetune.device.cap_memory`)."""

GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""torchrun's variables: a worker is in a trial group only when its slot puts it in one."""


@dataclass(frozen=True)
class Slot:
    """Where one worker runs."""

    gpu: str | None
    """Its CUDA_VISIBLE_DEVICES (one GPU, seen as cuda:0 inside the worker, or a trial group's GPUs); None: the CPU,
    or whatever Ray gives a Ray task."""
    memory_fraction: float | None
    """Its cap on that GPU's memory when it shares the GPU with other workers (1/K for K of them); None: no cap."""
    threads: int
    """Its CPU threads (OMP_NUM_THREADS): an equal share of the cores, or ``--cpus-per-worker``."""
    group: int = 0
    """Which trial group it belongs to (``--gpus-per-trial``: the processes that train one trial together)."""
    rank: int = 0
    """Its rank in that group (0 talks to the study)."""
    world: int = 1
    """The group's size (1: a worker of its own)."""
    ray_gpus: float | None = None
    """For a Ray task: the GPUs it asks Ray for (a share when packing); None: not a Ray task."""
    ray_cpus: float | None = None
    """For a Ray task: the CPUs it asks Ray for."""

    def describe(self) -> str:
        """How the launcher's log names the slot."""
        if self.ray_gpus is not None:
            return f"{self.ray_gpus:g} GPU and {self.ray_cpus:g} CPU"
        rank = f"rank {self.rank} of {self.world} in group {self.group}, " if self.world > 1 else ""
        if self.gpu is None:
            return f"{rank}{self.threads} threads"
        share = f", {self.memory_fraction:.0%} of its memory" if self.memory_fraction else ""
        return f"{rank}gpu {self.gpu}{share}, {self.threads} threads"

    def env(self, base: Mapping[str, str], extra: Mapping[str, str] | None = None,
            master_port: int | None = None) -> dict[str, str]:
        """The environment of a worker in this slot: ``base`` (the launcher's) with ``extra``, its GPU and memory
        cap (none on the CPU), its share of the CPU threads and, in a trial group, torchrun's variables (rank,
        world size, where rank 0 listens). Inherited caps and ranks are dropped: only the slot sets them."""
        env = {**base, **(extra or {})}
        for name in (MEMORY_FRACTION_ENV, *GROUP_ENV):
            env.pop(name, None)
        if self.world > 1:
            env.update(RANK=str(self.rank), LOCAL_RANK=str(self.rank), WORLD_SIZE=str(self.world),
                       LOCAL_WORLD_SIZE=str(self.world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(master_port or 29500))
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        if self.memory_fraction is not None:
            env[MEMORY_FRACTION_ENV] = f"{self.memory_fraction:.6g}"
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        return env


def threads_per_worker(count: int, cores: int | None = None) -> int:
    """The CPU threads each of ``count`` workers gets from ``cores`` (default: this machine's)."""
    return max(1, (cores or os.cpu_count() or 1) // count)


def place(workers: int | None, gpus: Sequence[str], per_gpu: int | None = None,
          threads: float | None = None) -> list[Slot]:
    """One slot per worker: ``per_gpu`` workers on each GPU (default: ``workers`` spread round robin over
    ``gpus``, else one per GPU); on the CPU (no ``gpus``), ``workers`` processes splitting the cores. Each gets
    ``threads`` CPU threads (default: an equal share of the cores); workers sharing a GPU split its memory."""
    count = workers or (len(gpus) * (per_gpu or 1) if gpus else 1)
    each = max(1, int(threads)) if threads else threads_per_worker(count)
    if not gpus:
        return [Slot(None, None, each) for _ in range(count)]
    assigned = [gpus[i % len(gpus)] for i in range(count)]
    sharing = {g: assigned.count(g) for g in assigned}
    return [Slot(g, 1 / sharing[g] if sharing[g] > 1 else None, each) for g in assigned]


def place_groups(groups: int | None, gpus: Sequence[str], per_trial: int) -> list[Slot]:
    """``--gpus-per-trial K``: ``groups`` trial groups (default: as many as the GPUs hold) of K processes each,
    group g on GPUs g*K .. g*K+K-1 (each rank sees the group's GPUs and takes number LOCAL_RANK); on the CPU
    (no ``gpus``), K processes per group splitting the cores. The rules checked that the GPUs suffice."""
    count = groups or (len(gpus) // per_trial if gpus else 1)
    threads = threads_per_worker(count * per_trial)
    return [Slot(",".join(gpus[g * per_trial:(g + 1) * per_trial]) if gpus else None, None, threads, g, r, per_trial)
            for g in range(count) for r in range(per_trial)]


def place_on_ray(workers: int | None, gpus_each: float, cpus_each: float, per_gpu: int | None) -> list[Slot]:
    """Ray tasks: ``workers`` of them (default 1), each asking for ``gpus_each`` GPUs and ``cpus_each`` CPUs; Ray
    decides where they run and pins their GPUs. Tasks sharing a GPU (``per_gpu``) are capped at 1/K of its
    memory."""
    fraction = 1.0 / per_gpu if per_gpu and gpus_each else None
    return [Slot(None, fraction, max(1, int(cpus_each)), ray_gpus=gpus_each, ray_cpus=cpus_each)
            for _ in range(workers or 1)]

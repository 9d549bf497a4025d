"""Local workers: ``hpsearch run --workers N`` (or ``--gpus 0,1``, ``--trials-per-gpu K``) starts processes on one
shared study.

Each worker is an ordinary ``hpsearch run`` with the same space and storage and a shared ``--total``. Placement
(:func:`place`): workers go round robin over the GPUs (the listed ones, else every visible one), each pinned to
its GPU through CUDA_VISIBLE_DEVICES; workers that share a GPU are each capped at an equal share of its memory
(``HPSEARCH_GPU_MEMORY_FRACTION``, applied with ``torch.cuda.set_per_process_memory_fraction``); every worker gets
an equal share of the CPU threads. The parent creates the study and tokenizes the data first (so workers start
from the cache and never race to create the study), then prefixes each worker's log lines.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UsageError
from ..finetune.device import MEMORY_FRACTION_ENV


@dataclass(frozen=True)
class Slot:
    """Where one local worker runs."""

    gpu: str | None
    """Its CUDA_VISIBLE_DEVICES (one GPU, seen as cuda:0 inside the worker); None: the CPU."""
    memory_fraction: float | None
    """Its cap on that GPU's memory when it shares the GPU with other workers (1/K for K of them); None: no cap."""
    threads: int
    """Its CPU threads (OMP_NUM_THREADS): an equal share of the cores."""
    group: int = 0
    """Which trial group it belongs to (``--gpus-per-trial``: the processes that train one trial together)."""
    rank: int = 0
    """Its rank in that group (0 talks to the study)."""
    world: int = 1
    """The group's size (1: a worker of its own)."""

    def describe(self) -> str:
        """How the launcher's log names the slot."""
        rank = f"rank {self.rank} of {self.world} in group {self.group}, " if self.world > 1 else ""
        if self.gpu is None:
            return f"{rank}{self.threads} threads"
        share = f", {self.memory_fraction:.0%} of its memory" if self.memory_fraction else ""
        return f"{rank}gpu {self.gpu}{share}, {self.threads} threads"


def visible_gpus(device: str = "auto") -> list[str]:
    """The GPUs workers may use: none when the run is on the CPU; else CUDA_VISIBLE_DEVICES's list when it is set
    (empty or -1: none), else every GPU torch sees, numbered from 0."""
    if device == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        gpus = [g.strip() for g in listed.split(",") if g.strip()]
        return [] if not gpus or gpus[0].startswith("-") else gpus
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def place_groups(groups: int | None, gpus: Sequence[str], per_trial: int) -> list[Slot]:
    """``--gpus-per-trial K``: ``groups`` trial groups (default: as many as the GPUs hold) of K processes each,
    group g on GPUs g*K .. g*K+K-1 (each rank sees the group's GPUs and takes number LOCAL_RANK); on the CPU
    (no ``gpus``), K processes per group splitting the cores.

    >>> [(s.gpu, s.group, s.rank) for s in place_groups(None, ["0", "1", "2", "3"], 2)]
    [('0,1', 0, 0), ('0,1', 0, 1), ('2,3', 1, 0), ('2,3', 1, 1)]
    """
    if gpus and len(gpus) < per_trial:
        raise UsageError(f"--gpus-per-trial {per_trial}: only {len(gpus)} GPU(s) visible ({','.join(gpus)})")
    count = groups or (len(gpus) // per_trial if gpus else 1)
    if gpus and count * per_trial > len(gpus):
        raise UsageError(f"--workers {count} with --gpus-per-trial {per_trial}: needs {count * per_trial} GPUs, "
                         f"{len(gpus)} visible ({','.join(gpus)})")
    threads = threads_per_worker(count * per_trial)
    return [Slot(",".join(gpus[g * per_trial:(g + 1) * per_trial]) if gpus else None, None, threads, g, r, per_trial)
            for g in range(count) for r in range(per_trial)]


def place(workers: int | None, gpus: Sequence[str], per_gpu: int | None = None,
          threads: float | None = None) -> list[Slot]:
    """One :class:`Slot` per worker: ``per_gpu`` workers on each GPU (default: ``workers`` spread round robin
    over ``gpus``, else one per GPU); on the CPU (no ``gpus``), ``workers`` processes splitting the cores. Each
    gets ``threads`` CPU threads (default: an equal share of the cores).

    >>> [s.gpu for s in place(4, ["0", "1"])], place(4, ["0", "1"])[0].memory_fraction
    (['0', '1', '0', '1'], 0.5)
    >>> len(place(None, ["0", "1"], per_gpu=4)), place(None, ["3"])[0].memory_fraction
    (8, None)
    """
    count = workers or (len(gpus) * (per_gpu or 1) if gpus else 1)
    each = max(1, int(threads)) if threads else threads_per_worker(count)
    if not gpus:
        return [Slot(None, None, each) for _ in range(count)]
    assigned = [gpus[i % len(gpus)] for i in range(count)]
    sharing = {g: assigned.count(g) for g in assigned}
    return [Slot(g, 1 / sharing[g] if sharing[g] > 1 else None, each) for g in assigned]


def worker_env(slot: Slot, extra: dict[str, str] | None = None, master_port: int | None = None) -> dict[str, str]:
    """The environment of a worker in ``slot``: this process's, with ``extra``, its GPU and memory cap (none on the
    CPU), its share of the CPU threads and, in a trial group, torchrun's variables (rank, world size, where rank 0
    listens)."""
    env = {**os.environ, **(extra or {})}
    for name in (MEMORY_FRACTION_ENV, *GROUP_ENV):
        env.pop(name, None)
    if slot.world > 1:
        env.update(RANK=str(slot.rank), LOCAL_RANK=str(slot.rank), WORLD_SIZE=str(slot.world),
                   LOCAL_WORLD_SIZE=str(slot.world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port or 29500))
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        if slot.memory_fraction is not None:
            env[MEMORY_FRACTION_ENV] = f"{slot.memory_fraction:.6g}"
    env.update(OMP_NUM_THREADS=str(slot.threads), MKL_NUM_THREADS=str(slot.threads))
    return env


GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""torchrun's variables: a worker is in a trial group only when its launcher puts it in one."""


def free_port() -> int:
    """A TCP port nothing listens on now (where a group's rank 0 will)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_worker(count: int) -> int:
    """The CPU threads each of ``count`` workers gets."""
    return max(1, (os.cpu_count() or 1) // count)


def check_storage_for_workers(url: str, count: int) -> None:
    """SQLite serializes writers; several workers work (WAL, busy timeout) but a server scales further."""
    if count > 4 and url.startswith("sqlite"):
        raise UsageError(f"--workers {count} on SQLite: use at most 4 workers on one SQLite file, or PostgreSQL "
                         "(--storage postgresql://...) for more")


def _pump(stream: Any, prefix: str, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stderr.write(f"{prefix} {line}")
            sys.stderr.flush()


def launch(run_args: list[str], slots: Sequence[Slot], total: int, env: dict[str, str] | None = None) -> int:
    """Start one worker per slot running ``hpsearch run RUN_ARGS --total TOTAL --quiet`` with ``env`` added to its
    environment (the storage URL goes there: a password never shows in a process list); wait; return the exit
    code."""
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps = []
    ports = {slot.group: free_port() for slot in slots if slot.world > 1}
    for i, slot in enumerate(slots):
        cmd = [sys.executable, "-m", "hpsearch", "run", *run_args, "--total", str(total), "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=worker_env(slot, env, ports.get(slot.group)))
        procs.append(proc)
        print(f"[hpsearch] worker w{i} started (pid {proc.pid}, {slot.describe()})", file=sys.stderr, flush=True)
        t = threading.Thread(target=_pump, args=(proc.stdout, f"[w{i}]", lock), daemon=True)
        t.start()
        pumps.append(t)
    try:
        codes = _wait(procs, slots)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    for t in pumps:
        t.join(timeout=5)
    return max(codes, key=abs) if any(codes) else 0


GROUP_GRACE_S = 10.0
"""How long the other ranks of a trial group get to exit on their own after one rank failed, before SIGTERM."""


def _wait(procs: list[subprocess.Popen], slots: Sequence[Slot]) -> list[int]:
    """Wait for every worker; when a rank of a trial group exits with an error, end the rest of its group (a rank
    waiting for a peer that is gone would otherwise wait for the collective's timeout)."""
    ended_at: dict[int, float] = {}
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        for p, slot in zip(procs, slots):
            if slot.world > 1 and p.returncode not in (None, 0):
                ended_at.setdefault(slot.group, now)
        for p, slot in zip(procs, slots):
            started = ended_at.get(slot.group)
            if started is not None and p.poll() is None and now - started > GROUP_GRACE_S:
                p.terminate()
        time.sleep(0.2)
    return [p.returncode for p in procs]

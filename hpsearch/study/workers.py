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

    def describe(self) -> str:
        """How the launcher's log names the slot."""
        if self.gpu is None:
            return f"{self.threads} threads"
        share = f", {self.memory_fraction:.0%} of its memory" if self.memory_fraction else ""
        return f"gpu {self.gpu}{share}, {self.threads} threads"


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


def place(workers: int | None, gpus: Sequence[str], per_gpu: int | None = None) -> list[Slot]:
    """One :class:`Slot` per worker: ``per_gpu`` workers on each GPU (default: ``workers`` spread round robin
    over ``gpus``, else one per GPU); on the CPU (no ``gpus``), ``workers`` processes splitting the cores.

    >>> [s.gpu for s in place(4, ["0", "1"])], place(4, ["0", "1"])[0].memory_fraction
    (['0', '1', '0', '1'], 0.5)
    >>> len(place(None, ["0", "1"], per_gpu=4)), place(None, ["3"])[0].memory_fraction
    (8, None)
    """
    count = workers or (len(gpus) * (per_gpu or 1) if gpus else 1)
    threads = threads_per_worker(count)
    if not gpus:
        return [Slot(None, None, threads) for _ in range(count)]
    assigned = [gpus[i % len(gpus)] for i in range(count)]
    sharing = {g: assigned.count(g) for g in assigned}
    return [Slot(g, 1 / sharing[g] if sharing[g] > 1 else None, threads) for g in assigned]


def worker_env(slot: Slot, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker in ``slot``: this process's, with ``extra``, its GPU and memory cap (none on the
    CPU) and its share of the CPU threads."""
    env = {**os.environ, **(extra or {})}
    env.pop(MEMORY_FRACTION_ENV, None)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        if slot.memory_fraction is not None:
            env[MEMORY_FRACTION_ENV] = f"{slot.memory_fraction:.6g}"
    env.update(OMP_NUM_THREADS=str(slot.threads), MKL_NUM_THREADS=str(slot.threads))
    return env


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
    for i, slot in enumerate(slots):
        cmd = [sys.executable, "-m", "hpsearch", "run", *run_args, "--total", str(total), "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=worker_env(slot, env))
        procs.append(proc)
        print(f"[hpsearch] worker w{i} started (pid {proc.pid}, {slot.describe()})", file=sys.stderr, flush=True)
        t = threading.Thread(target=_pump, args=(proc.stdout, f"[w{i}]", lock), daemon=True)
        t.start()
        pumps.append(t)
    try:
        codes = [p.wait() for p in procs]
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

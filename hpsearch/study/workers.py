"""Local workers: ``hpsearch run --workers N`` (or ``--gpus 0,1``) starts N processes on one shared study.

Each worker is an ordinary ``hpsearch run`` with the same space and storage and a shared ``--total``, pinned to
one GPU through CUDA_VISIBLE_DEVICES, or given an equal share of the CPU cores. The parent creates the study
and tokenizes the data first (so workers start from the cache and never race to create the study), then
prefixes each worker's log lines and keeps one view of the study.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from ..errors import UsageError


def worker_env(index: int, count: int, gpus: Sequence[str] | None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``index``: this process's, with ``extra``, and its GPU or its share of the CPU
    threads."""
    env = {**os.environ, **(extra or {})}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index]
    else:
        threads = str(threads_per_worker(count))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
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


def launch(run_args: list[str], count: int, gpus: Sequence[str] | None, total: int,
           env: dict[str, str] | None = None) -> int:
    """Start ``count`` workers running ``hpsearch run RUN_ARGS --total TOTAL --quiet`` with ``env`` added to their
    environment (the storage URL goes there: a password never shows in a process list); wait; return the exit
    code."""
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps = []
    for i in range(count):
        cmd = [sys.executable, "-m", "hpsearch", "run", *run_args, "--total", str(total), "--quiet"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=worker_env(i, count, gpus, env))
        procs.append(proc)
        where = f"gpu {gpus[i]}" if gpus else f"{threads_per_worker(count)} threads"
        print(f"[hpsearch] worker w{i} started (pid {proc.pid}, {where})", file=sys.stderr, flush=True)
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

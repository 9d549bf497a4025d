"""Starting a run: the machine probed, the run's rules checked (:mod:`hpsearch.config.rules`), then the trials run
here or in the worker processes of the plan: local processes (``--workers``, ``--gpus``, ``--trials-per-gpu``,
``--gpus-per-trial``) or Ray tasks (``--ray``).

With workers, the launcher prepares once (the data cache, the study, a warm start) so that workers start from the
cache and never race to create the study, then starts one worker process per slot (:mod:`hpsearch.study.worker`)
with the slot's environment and one shared budget, and prefixes each worker's log lines.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..config.options import RunOptions
from ..config.placement import Slot
from ..config.rules import Plan, decide_run
from ..config.space import Space
from ..errors import HpsearchError
from .machine import probe
from .worker import spec
from .worker import start as start_worker

GROUP_GRACE_S = 10.0
"""How long the other ranks of a trial group get to exit on their own after one rank failed, before SIGTERM."""


def start(space: Space, options: RunOptions) -> Any:
    """Run ``options``' trials of ``space`` (storage and study name resolved) as the rules decide: here, in local
    worker processes or as Ray tasks; return the study (None on a rank of a trial group other than 0)."""
    with probe(options, options.device) as machine:
        plan = decide_run(space, options, machine)
        if plan.launcher == "here":
            from .runner import run_study

            return run_study(space, plan.options)
        return _run_workers(space, plan, machine.ray)


def _run_workers(space: Space, plan: Plan, cluster: Any) -> Any:
    """Prepare once here (data cache, study, warm start), then start the plan's workers with one shared budget."""
    from ..finetune.recipe import tokenize
    from .resilient import resilient, ride_out
    from .runner import FINISHED, open_study, storage_window
    from .storage import open_storage, redact

    opts = plan.options
    url, name = opts.storage, opts.study_name
    tokenize(space)  # fills the data cache before the workers start
    shown, window = redact(url), storage_window(opts)
    storage = resilient(ride_out(lambda: open_storage(url, heartbeat_interval=None), shown, window), shown, window)
    study = open_study(storage, name, space, warm_start=opts.warm_start)
    total = opts.total
    if total is None:
        total = len(study.get_trials(deepcopy=False, states=FINISHED)) + (opts.trials or 0)
    print(f"[hpsearch] {len(plan.slots)} workers on study {name} in {redact(url)}, until {total} finished trials",
          file=sys.stderr, flush=True)
    worker_spec = spec(space, opts.for_worker(total))
    if plan.launcher == "ray":
        from .raylaunch import launch_on_ray

        codes = launch_on_ray(cluster, plan.slots, worker_spec)
    else:
        codes = launch(worker_spec, plan.slots)
    failed = [(i, c) for i, c in enumerate(codes) if c]
    if not failed:
        return study
    said = "; ".join(f"worker w{i} {_exit_said(c)}" for i, c in failed)
    interrupted = next((_exit_code(c) for _, c in failed if _exit_code(c) in (130, 143)), None)
    if interrupted is None and _finished(study) >= total:  # the others finished the budget: the study is whole
        print(f"[hpsearch] {said}; the study reached its {total} finished trials all the same", file=sys.stderr,
              flush=True)
        return study
    error = HpsearchError(f"{len(plan.slots)} workers on study {name}: {said}")
    error.exit_code = interrupted or 1  # 130 / 143 when interrupted; never a raw negative status
    raise error


def _exit_code(code: int) -> int:
    """A worker's exit status as a shell gives it: 128 + N for a worker killed by signal N."""
    return 128 - code if code < 0 else code


def _exit_said(code: int) -> str:
    """How the launcher names a worker's end: its exit status, or the signal that killed it."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _finished(study: Any) -> int:
    from .runner import FINISHED

    return len(study.get_trials(deepcopy=False, states=FINISHED))


def free_port() -> int:
    """A TCP port nothing listens on now (where a group's rank 0 will)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(stream: Any, prefix: str, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stderr.write(f"{prefix} {line}")
            sys.stderr.flush()


def launch(worker_spec: str, slots: Sequence[Slot]) -> list[int]:
    """Start one worker process per slot with ``worker_spec`` and the slot's environment; wait; return their exit
    codes. Ctrl-C passes SIGINT to each and waits for them to mark their trials."""
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps = []
    ports = {slot.group: free_port() for slot in slots if slot.world > 1}
    for i, slot in enumerate(slots):
        proc = start_worker(worker_spec, slot.env(os.environ, master_port=ports.get(slot.group)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
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
    return codes


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

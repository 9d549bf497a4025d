"""``hpsearch run --ray [ADDRESS]``: the study's workers as Ray tasks on a local or remote Ray cluster.

The cluster is connected before the run's rules are checked (:func:`connected`), so an unreachable address is one
line and its GPUs are known before anything is written. Each task asks Ray for its slot's resources
(:func:`hpsearch.config.placement.place_on_ray`: a GPU, 1/K of one with ``--trials-per-gpu K``, K with
``--gpus-per-trial K``, none on the CPU; ``--cpus-per-worker`` CPUs) and runs an ordinary worker process
(:mod:`hpsearch.study.worker`) on the GPU(s) Ray gave it, so a Ray worker is the same worker as anywhere else: the
study stays in the shared storage, workers outside Ray can join it, and a lost node's trial goes through the
heartbeat retry. The nodes must see the data and the model at the same paths (a shared file system or the same
image).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config.placement import Slot
from ..config.rules import RayCluster
from ..errors import HpsearchError


@contextlib.contextmanager
def connected(address: str) -> Iterator[RayCluster]:
    """Connect to the Ray cluster at ``address`` ("": a local Ray started here) for the block; the cluster's
    resources, or why it could not be reached."""
    import ray

    shown = address or "a local Ray"
    unreachable = _unreachable(address)
    if unreachable:
        yield RayCluster(shown, error=unreachable)
        return
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    except Exception as exc:  # ConnectionError, a timeout, a bad address: the reason in one line
        lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        yield RayCluster(shown, error=lines[0][:300])
        return
    try:
        resources = ray.cluster_resources()
        yield RayCluster(shown, gpus=float(resources.get("GPU", 0)), cpus=float(resources.get("CPU", 0)))
    finally:
        ray.shutdown()


CONNECT_TIMEOUT_S = 5.0
"""How long the head's port gets to answer before the address counts as unreachable (Ray's own client waits 30 s
and then warns with a traceback-like message)."""


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a ``ray://HOST:PORT`` or ``HOST:PORT`` address (None: something listens, or the
    address names no port to try: "auto", a local Ray)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return "not an address of the form ray://HOST:PORT or HOST:PORT"
    if not host or port is None:
        return None
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"
    return None


RAY_TASK_RETRIES = 3
"""Times Ray runs a worker task again after its node or process was lost (not after the worker failed)."""


def _worker(worker_spec: str, cwd: str | None, env: dict[str, str]) -> int:
    """One worker, inside a Ray task: a worker process of the node's Python with the task's CUDA_VISIBLE_DEVICES;
    a cancelled task (Ctrl-C on the driver) passes SIGINT on and waits for the worker to mark its trial."""
    from .worker import start

    workdir = cwd if cwd and Path(cwd).is_dir() else None
    proc = start(worker_spec, {**os.environ, **env}, cwd=workdir)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def launch_on_ray(cluster: RayCluster, slots: Sequence[Slot], worker_spec: str) -> list[int]:
    """Run a Ray task per slot on the connected ``cluster``; wait; return each task's exit code."""
    import ray

    first = slots[0]
    print(f"[hpsearch] {len(slots)} workers as Ray tasks on {cluster.address} ({cluster.cpus:g} CPUs, "
          f"{cluster.gpus:g} GPUs): {first.describe()} each", file=sys.stderr, flush=True)
    refs = []
    for slot in slots:
        # A task lost with its node is run again elsewhere: it joins the study, and the lost trial, failed once its
        # heartbeats stop, is continued from its checkpoint by whichever worker takes its retry.
        remote = ray.remote(num_cpus=slot.ray_cpus, num_gpus=slot.ray_gpus, max_retries=RAY_TASK_RETRIES)(_worker)
        refs.append(remote.remote(worker_spec, os.getcwd(), slot.env({})))  # Ray pins the task's GPUs
    try:
        return list(ray.get(refs))
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        raise
    except ray.exceptions.RayError as exc:
        raise HpsearchError(f"a Ray worker was lost: {str(exc).splitlines()[0][:300]} (its trial is retried "
                            f"through the heartbeats when a worker runs again)") from exc

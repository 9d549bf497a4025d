"""``hpsearch run --ray [ADDRESS]``: the study's workers as Ray tasks on a local or remote Ray cluster.

Each task asks Ray for its resources (``num_gpus``: 1, 1/K with ``--trials-per-gpu K``, K with ``--gpus-per-trial
K``, 0 on the CPU; ``num_cpus``: ``--cpus-per-worker``, default 1) and runs an ordinary ``hpsearch run`` worker in
a child process on the GPU(s) Ray gave it, so a Ray worker is the same worker as anywhere else: the study stays in
the shared storage, workers outside Ray can join it, and a lost node's trial goes through the heartbeat retry. The
nodes must see the space file and the data at the same paths (a shared file system or the same image).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import HpsearchError, UsageError
from ..finetune.device import MEMORY_FRACTION_ENV


def gpus_per_worker(device: str, trials_per_gpu: int | None, gpus_per_trial: int | None,
                    cluster_gpus: float) -> float:
    """What one worker asks Ray for: a share of a GPU when packing, K GPUs for a K-GPU trial, none on the CPU (or on
    a cluster without GPUs when the device is auto)."""
    if device == "cpu":
        return 0.0
    if gpus_per_trial:
        return float(gpus_per_trial)
    if trials_per_gpu:
        return 1.0 / trials_per_gpu
    if device.startswith("cuda") and cluster_gpus == 0:
        raise UsageError(f"--device {device} with --ray: the Ray cluster has no GPU")
    return 1.0 if cluster_gpus > 0 else 0.0


def _worker(args: list[str], cwd: str | None, env: dict[str, str]) -> int:
    """One worker, inside a Ray task: ``hpsearch run ARGS`` in a child process of the node's Python, with the
    task's CUDA_VISIBLE_DEVICES; a cancelled task (Ctrl-C on the driver) passes SIGINT on and waits for the worker
    to mark its trial."""
    workdir = cwd if cwd and Path(cwd).is_dir() else None
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", *args], cwd=workdir, env={**os.environ, **env})
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def launch_on_ray(address: str, run_args: list[str], count: int, total: int, env: dict[str, str], *,
                  device: str, trials_per_gpu: int | None, gpus_per_trial: int | None,
                  cpus: float | None) -> int:
    """Start ``count`` workers as Ray tasks on the cluster at ``address`` ("": $RAY_ADDRESS, else a local Ray
    started here), wait, and return the worst exit code."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'hpsearch[ray]'") from None
    target = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=target, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True,
             **({} if target else {"num_cpus": os.cpu_count()}))
    try:
        resources = ray.cluster_resources()
        num_gpus = gpus_per_worker(device, trials_per_gpu, gpus_per_trial, float(resources.get("GPU", 0)))
        num_cpus = 1.0 if cpus is None else cpus
        task_env = dict(env)
        if trials_per_gpu and num_gpus:
            task_env[MEMORY_FRACTION_ENV] = f"{1.0 / trials_per_gpu:.6g}"
        task_env.setdefault("OMP_NUM_THREADS", str(max(1, int(num_cpus))))
        extra = ["--gpus-per-trial", str(gpus_per_trial)] if gpus_per_trial else []
        print(f"[hpsearch] {count} workers as Ray tasks on {target or 'a local Ray'} "
              f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs): {num_gpus:g} GPU and "
              f"{num_cpus:g} CPU each", file=sys.stderr, flush=True)
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_worker)
        args = [*run_args, *extra, "--total", str(total), "--quiet"]
        refs = [remote.remote(args, os.getcwd(), task_env) for _ in range(count)]
        try:
            codes = ray.get(refs)
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref)
            raise
        except ray.exceptions.RayError as exc:
            raise HpsearchError(f"a Ray worker was lost: {str(exc).splitlines()[0][:300]} (its trial is retried "
                                f"through the heartbeats when a worker runs again)") from exc
        return max(codes, key=abs) if any(codes) else 0
    finally:
        ray.shutdown()


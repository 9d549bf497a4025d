"""What this machine offers a run, gathered once before the run's rules are checked
(:class:`hpsearch.config.rules.Machine`): the GPUs it can use, the optional packages installed, the environment
variables options fall back on, whether MLflow takes the tracking URI, and, with ``--ray``, the Ray cluster,
connected for the run's length."""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

from ..config.options import RunOptions
from ..config.rules import EXTRAS, Machine

ENVIRON = ("MLFLOW_TRACKING_URI", "WANDB_PROJECT", "RAY_ADDRESS")
"""The variables a run's options fall back on."""


def visible_gpus(device: str = "auto") -> tuple[str, ...]:
    """The GPUs this process can use, as CUDA_VISIBLE_DEVICES numbers them: none when the run is on the CPU; else
    CUDA_VISIBLE_DEVICES's entries (empty or -1: none) that CUDA finds, else every GPU torch sees, from 0."""
    if device == "cpu":
        return ()
    import torch

    count = torch.cuda.device_count()  # counts what CUDA_VISIBLE_DEVICES leaves visible (NVML: no CUDA context)
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return tuple(str(i) for i in range(count))
    entries = [g.strip() for g in listed.split(",") if g.strip()]
    if not entries or entries[0].startswith("-"):
        return ()
    return tuple(entries[:count])  # CUDA stops at the first entry it cannot find


def installed() -> frozenset[str]:
    """The optional packages of :data:`hpsearch.config.rules.EXTRAS` importable here."""
    return frozenset(name for name in EXTRAS if importlib.util.find_spec(name) is not None)


@contextlib.contextmanager
def probe(options: RunOptions | None = None, device: str = "auto") -> Iterator[Machine]:
    """The machine's facts for a run with ``options`` on ``device`` (a retraining: ``options`` None); with
    ``--ray`` the cluster stays connected until the block ends."""
    packages = installed()
    environ = {k: os.environ[k] for k in ENVIRON if k in os.environ}
    facts = dict(gpus=visible_gpus(device), listed=os.environ.get("CUDA_VISIBLE_DEVICES"), packages=packages,
                 environ=environ)
    if options is not None and options.mlflow is not None and "mlflow" in packages:
        from .tracking import store_problem

        uri = options.mlflow or environ.get("MLFLOW_TRACKING_URI")
        facts["mlflow_store"] = store_problem(uri) if uri else None
    if options is None or options.ray is None or "ray" not in packages:
        yield Machine(**facts)
        return
    from .raylaunch import connected

    with connected(options.ray or environ.get("RAY_ADDRESS", "")) as cluster:
        yield Machine(**facts, ray=cluster)

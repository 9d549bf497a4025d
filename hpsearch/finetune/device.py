"""Where a model trains: the device a run names, its memory cap, its numerics (TF32, no cuDNN attention, determinism),
autocast, and the peak memory a trial reports. The precision plan is :mod:`hpsearch.finetune.precision`."""
from __future__ import annotations

import os
import resource
from typing import Any

import torch

from ..config.placement import MEMORY_FRACTION_ENV
from ..errors import HpsearchError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; ``cuda`` without one is an error naming the flag. On a GPU, the
    memory cap of :data:`MEMORY_FRACTION_ENV` is applied."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise HpsearchError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HpsearchError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered "
                                "from 0")
    if device.type == "cuda":
        cap_memory(device)
    return device


def cap_memory(device: torch.device) -> float | None:
    """Cap this process's share of ``device``'s memory at :data:`MEMORY_FRACTION_ENV` (unset: no cap); a worker
    that outgrows it meets an out-of-memory error (its micro-batch halves, or the trial fails) instead of
    starving the others on the GPU. Return the cap."""
    raw = os.environ.get(MEMORY_FRACTION_ENV)
    if raw is None:
        return None
    try:
        fraction = float(raw)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise HpsearchError(f"{MEMORY_FRACTION_ENV}={raw!r}: must be a fraction of the GPU's memory in (0, 1]")
    torch.cuda.set_per_process_memory_fraction(fraction, device.index if device.index is not None else
                                               torch.cuda.current_device())
    return fraction


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True) -> Any:
    """Autocast to ``dtype`` on ``device`` (None: a no-op context); ``cache`` False for a CUDA graph's capture,
    which autocast's cache of cast weights would break."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=cache)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on the CPU (Linux: ``VmHWM``,
    this program's own; ``ru_maxrss`` also counts the parent's memory that a spawned process had before its exec)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def set_numerics(device: torch.device) -> None:
    """How a GPU computes: fp32 matrix products on TF32 tensor cores where it has them (compute capability 8.0+:
    the fp32 parts of mixed precision, and fp32 training, at tensor-core speed, 10 mantissa bits in the products),
    and no cuDNN attention. cuDNN's SDPA backend builds a plan for every new (batch, width) shape, about 0.2 s each
    on the H200 (186 / 203 / 218 ms in three trials, bench/results/raw/profile_h200.txt: the same evaluation batches
    took 0.77 s in a first trial, 0.07 s once planned); the memory-efficient and flash backends build none."""
    if device.type != "cuda":
        return
    if torch.cuda.get_device_capability(device)[0] >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_cudnn_sdp(False)


def deterministic(device: torch.device) -> None:
    """``study.deterministic``: the same trial gives the same numbers from its seed on a GPU too (deterministic
    kernels, cuBLAS's fixed workspace, no cuDNN autotuning), at some speed. Kernels without a deterministic version
    warn instead of failing the trial."""
    import os

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)

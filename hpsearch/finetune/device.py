"""Where and in what precision a model trains: the device a run names, bf16 autocast where the hardware has it,
and the peak memory a trial reports."""
from __future__ import annotations

import resource
from typing import Any

import torch

from ..errors import HpsearchError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; ``cuda`` without one is an error naming the flag."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HpsearchError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise HpsearchError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix products run natively (elsewhere bf16 is emulated and slower)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16. ``auto``: on a GPU that supports it, and on a CPU with native bf16.

    On this project's 2-core AMX CPU, bf16 autocast made the benchmark trials 1.3x faster with the same
    validation accuracy (bench/README.md); ``fp32`` turns it off.
    """
    if precision == "fp32":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return precision == "bf16" or cpu_has_native_bf16()


def autocast(device: torch.device, bf16: bool) -> Any:
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

"""Where and in what precision a model trains: the device a run names, the precision plan (the dtype of loaded,
trained and computed values), TF32 on GPUs that have it, and the peak memory a trial reports."""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
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


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix products run natively (elsewhere bf16 is emulated and slower)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device`` (None: a no-op context)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass(frozen=True)
class Precision:
    """How a model trains, said rather than implied: the dtype its weights load in (and frozen ones stay in), the
    dtype of the trained parameters (and so of their gradients and AdamW state), the autocast dtype of the compute
    (None: none), and whether a loss scaler guards fp16 gradients against underflow."""

    name: str
    """What was chosen, as a trial records it: fp32, bf16-mixed, fp16-mixed or bf16-true."""
    weights: torch.dtype
    master: torch.dtype
    autocast: torch.dtype | None
    scaler: bool

    @property
    def mixed(self) -> bool:
        return self.autocast is not None


FP32 = Precision("fp32", torch.float32, torch.float32, None, False)
"""Everything in float32: what a model trains in when nothing else is said."""

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic runs natively: AMX / AVX512-BF16 on a CPU, compute capability 8.0+ on a GPU (where
    ``torch.cuda.is_bf16_supported()`` alone would also count the emulation of a V100 or T4)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


def precision_plan(precision: str, dtype: str, checkpoint: torch.dtype | None, device: torch.device) -> Precision:
    """The :class:`Precision` of ``model.precision`` and ``model.dtype`` on ``device`` for a checkpoint saved in
    ``checkpoint`` (None: it says nothing, float32).

    >>> precision_plan("bf16", "auto", torch.bfloat16, torch.device("cpu"))
    Precision(name='bf16-mixed', weights=torch.bfloat16, master=torch.float32, autocast=torch.bfloat16, scaler=False)
    >>> precision_plan("fp32", "auto", torch.bfloat16, torch.device("cpu")).weights
    torch.float32
    """
    if precision == "auto":
        if native_bf16(device):
            precision = "bf16"
        else:
            precision = "fp16" if device.type == "cuda" else "fp32"
    loaded = DTYPE_NAMES.get(dtype) or (checkpoint if checkpoint in DTYPE_NAMES.values() else torch.float32)
    if precision == "fp32":
        return FP32
    if precision == "bf16-true":
        return Precision("bf16-true", torch.bfloat16, torch.bfloat16, None, False)
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16(device):
            raise HpsearchError(f"model.precision bf16: {torch.cuda.get_device_name(device)} has no native bf16 "
                                f"(it would be emulated, slowly); use fp16 (mixed, with a loss scaler) or auto")
        return Precision("bf16-mixed", loaded, torch.float32, torch.bfloat16, False)
    if precision == "fp16":
        return Precision("fp16-mixed", loaded, torch.float32, torch.float16, True)
    raise ValueError(f"precision must be one of auto, fp32, bf16, fp16, bf16-true, got {precision!r}")


def use_tf32(device: torch.device) -> None:
    """Let fp32 matrix products use TF32 tensor cores on GPUs that have them (compute capability 8.0+): the fp32
    parts of mixed precision, and fp32 training, at tensor-core speed (10 mantissa bits in the products)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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

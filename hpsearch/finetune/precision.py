"""The precision a model trains in (:class:`Precision`, from ``model.precision`` and ``model.dtype``) and what
``auto`` chooses on each device, and why.

On a GPU ``auto`` chooses by what pays there, not by what the GPU supports. Mixed bf16 halves the arithmetic of the
matrix products but casts every fp32 weight to bf16 on every forward and back in the backward: 216 more kernel
launches a step for MiniLM (536 against 320, ``../shared/bench/ops_per_step.py``). A step whose kernels cost more
to launch than to run (a small model, a small batch: MiniLM kept an H200 busy 0.23 s of a 3.2 s trial,
bench/results/GPU.md) only gets slower from the casts; a step whose arithmetic takes longer than its launches (a
1B+ model, thousands of tokens a step) gets up to twice as fast. So ``auto`` estimates both from the model and the
space (:class:`Workload`): launches ~ :data:`KERNELS_PER_LAYER` a layer at :data:`LAUNCH_S` each (the H200
profile's eager PyTorch host cost per kernel, rounded down), arithmetic ~ 6 x matrix-product parameters x tokens
a step at the GPU's TF32 rate (:data:`TF32_FLOPS`, achievable rather than peak), and picks fp32 with TF32 matrix
products when launch-bound, mixed bf16 (fp16 without native bf16) when not. On a CPU, which is compute-bound, it
stays bf16 mixed where bf16 is native (AMX, AVX512-BF16) and fp32 elsewhere, as measured (bench/results/RESULTS.md).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import torch

from ..errors import HpsearchError

KERNELS_PER_LAYER = 50
"""Kernels an fp32 training step launches per transformer layer, forward, backward, clipping and AdamW included:
298 for MiniLM's 6 layers (``ops_per_step.py``, after the glue folded in #35), 319 for Trainer's."""
LAUNCH_S = 20e-6
"""Host time per kernel an eager PyTorch step spends (Python, dispatch, launch): 24 ms a step for ~600 launches on
the H200 under the profiler (bench/results/raw/profile_h200.txt), about half of that without it."""
TF32_FLOPS = {7: 12e12, 8: 100e12, 9: 300e12, 10: 600e12, 12: 80e12}
"""Achievable fp32-path matrix FLOP/s by compute capability major (TF32 on 8.0+: about 60 % of the dense peak of an
A100, H100/H200, B200; Volta and Turing have no TF32); (8, 6) and (8, 9) (A10, L4, RTX) are in
:data:`TF32_FLOPS_MINOR`."""
TF32_FLOPS_MINOR = {(8, 6): 25e12, (8, 7): 10e12, (8, 9): 40e12}


@dataclass(frozen=True)
class Precision:
    """How a model trains, said rather than implied: the dtype its weights load in (and frozen ones stay in), the
    dtype of the trained parameters (and so of their gradients and AdamW state), the autocast dtype of the compute
    (None: none), whether a loss scaler guards fp16 gradients against underflow, and why it was chosen."""

    name: str
    """What was chosen, as a trial records it: fp32, bf16-mixed, fp16-mixed or bf16-true."""
    weights: torch.dtype
    master: torch.dtype
    autocast: torch.dtype | None
    scaler: bool
    reason: str = "asked for by model.precision"
    """Why: the space asked for it, or what ``auto`` weighed (a trial records it as ``precision_reason``)."""

    @property
    def mixed(self) -> bool:
        return self.autocast is not None


FP32 = Precision("fp32", torch.float32, torch.float32, None, False)
"""Everything in float32: what a model trains in when nothing else is said."""

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Workload:
    """What one training step of a space computes, for ``auto`` to weigh launches against arithmetic."""

    matmul_parameters: int
    """Parameters of the model's matrix products (its linear layers; embeddings are lookups)."""
    layers: int
    """Transformer layers (each launches about :data:`KERNELS_PER_LAYER` kernels a step)."""
    tokens_per_step: float
    """Tokens a training step computes: the space's typical batch size times the mean training row."""

    def launch_s(self) -> float:
        return (KERNELS_PER_LAYER * max(1, self.layers) + 20) * LAUNCH_S

    def arithmetic_s(self, flops: float) -> float:
        return self.token_s(flops) * self.tokens_per_step

    def token_s(self, flops: float) -> float:
        """Seconds of arithmetic per token of a training pass (forward and backward: 6 FLOPs a parameter)."""
        return 6.0 * self.matmul_parameters / flops


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix products run natively (elsewhere bf16 is emulated and slower)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic runs natively: AMX / AVX512-BF16 on a CPU, compute capability 8.0+ on a GPU (where
    ``torch.cuda.is_bf16_supported()`` alone would also count the emulation of a V100 or T4)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


def auto_precision(device: torch.device, workload: Workload | None,
                   half_weights: torch.dtype | None = None) -> tuple[str, str]:
    """What ``model.precision: auto`` means on ``device`` for ``workload`` (None: unknown, a large model is
    assumed), with weights that load in ``half_weights`` (bf16 or fp16: the checkpoint's, or ``model.dtype``'s;
    None: fp32): the precision's name and the reason, in a sentence. On a GPU half-precision weights are never
    upcast (fp32 would double a frozen base's memory: 26 GB for a 7B LoRA, not 13), whatever launches cost: under
    mixed precision such a weight is used as loaded, no cast kernel."""
    if device.type != "cuda":
        if native_bf16(device):
            return "bf16", "auto on a CPU with native bf16 (AMX or AVX512-BF16): bf16 mixed, the faster there"
        return "fp32", "auto on a CPU without native bf16: fp32 (emulated bf16 is slower)"
    major, minor = torch.cuda.get_device_capability(device)
    half = "bf16" if native_bf16(device) else "fp16"
    where = f"{torch.cuda.get_device_name(device)} (sm{major}{minor})"
    if workload is None:
        return half, f"auto on {where}: {half} mixed (the model's workload is unknown: quantized weights)"
    flops = gpu_tf32_flops(device)
    launch, arithmetic = workload.launch_s(), workload.arithmetic_s(flops)
    weighed = (f"~{launch * 1e3:.1f} ms of kernel launches a step against ~{arithmetic * 1e3:.2f} ms of fp32-path "
               f"arithmetic ({workload.matmul_parameters / 1e6:.0f}M matrix parameters, "
               f"{workload.tokens_per_step:.0f} tokens a step)")
    if arithmetic < launch and half_weights is not None:
        loaded = {torch.bfloat16: "bf16", torch.float16: "fp16"}[half_weights]
        return half, (f"auto on {where}: {weighed}: launch-bound, but the weights load in {loaded}, which fp32 "
                      f"would upcast (twice their memory); {half} mixed uses them as loaded")
    if arithmetic < launch:
        products = "TF32 matrix products" if major >= 8 else "fp32 matrix products"
        return "fp32", f"auto on {where}: {weighed}: launch-bound, so fp32 with {products} ({half} mixed would " \
                       f"add a cast kernel per weight per pass)"
    return half, f"auto on {where}: {weighed}: compute-bound, so {half} mixed"


def gpu_tf32_flops(device: torch.device) -> float:
    """Achievable fp32-path (TF32) matrix FLOP/s of a GPU, from :data:`TF32_FLOPS` by its compute capability."""
    major, minor = torch.cuda.get_device_capability(device)
    return TF32_FLOPS_MINOR.get((major, minor)) or TF32_FLOPS.get(major) or TF32_FLOPS[
        max([k for k in TF32_FLOPS if k <= major] or [min(TF32_FLOPS)])]


def matmul_flops(device: torch.device, autocast: torch.dtype | None = None) -> float:
    """Matrix FLOP/s a training pass gets on ``device`` computing in ``autocast`` (None: fp32): a GPU's from the
    table (half precision twice TF32's), a CPU's measured once per process (CPUs differ too much to tabulate: AMX,
    AVX512-BF16, none)."""
    if device.type == "cuda":
        return gpu_tf32_flops(device) * (2.0 if autocast in (torch.bfloat16, torch.float16) else 1.0)
    return _cpu_flops(autocast or torch.float32)


@functools.cache
def _cpu_flops(dtype: torch.dtype) -> float:
    """The best of three 512 x 1024 x 1024 products in ``dtype`` on this CPU's threads (~1 GFLOP each)."""
    a, b = torch.randn(512, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 512 * 1024 * 1024 / max(best, 1e-6)


def precision_plan(precision: str, dtype: str, checkpoint: torch.dtype | None, device: torch.device,
                   workload: Workload | None = None) -> Precision:
    """The :class:`Precision` of ``model.precision`` and ``model.dtype`` on ``device`` for a checkpoint saved in
    ``checkpoint`` (None: it says nothing, float32); ``auto`` weighs ``workload`` (:func:`auto_precision`).

    >>> precision_plan("bf16", "auto", torch.bfloat16, torch.device("cpu"))   # doctest: +ELLIPSIS
    Precision(name='bf16-mixed', weights=torch.bfloat16, master=torch.float32, autocast=torch.bfloat16, ...)
    >>> precision_plan("fp32", "auto", torch.bfloat16, torch.device("cpu")).weights
    torch.float32
    """
    reason = "asked for by model.precision"
    loaded = DTYPE_NAMES.get(dtype) or (checkpoint if checkpoint in DTYPE_NAMES.values() else torch.float32)
    if precision == "auto":
        precision, reason = auto_precision(device, workload, loaded if loaded != torch.float32 else None)
    if precision == "fp32":
        return Precision("fp32", torch.float32, torch.float32, None, False, reason)
    if precision == "bf16-true":
        return Precision("bf16-true", torch.bfloat16, torch.bfloat16, None, False, reason)
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16(device):
            raise HpsearchError(f"model.precision bf16: {torch.cuda.get_device_name(device)} has no native bf16 "
                                f"(it would be emulated, slowly); use fp16 (mixed, with a loss scaler) or auto")
        return Precision("bf16-mixed", loaded, torch.float32, torch.bfloat16, False, reason)
    if precision == "fp16":
        return Precision("fp16-mixed", loaded, torch.float32, torch.float16, True, reason)
    raise ValueError(f"precision must be one of auto, fp32, bf16, fp16, bf16-true, got {precision!r}")


def typical_pass(params: dict, fixed: dict) -> float:
    """The rows a space's trials typically run through one forward pass: the batch size (fixed, or the middle of
    the searched choices or range, geometric for a log range), or a fixed micro-batch when smaller."""
    spec = params.get("batch_size")
    if spec is None:
        batch = float(fixed["batch_size"])
    elif spec["type"] == "categorical":
        batch = float(sorted(spec["choices"])[len(spec["choices"]) // 2])
    else:
        batch = math.sqrt(spec["low"] * spec["high"]) if spec.get("log") else (spec["low"] + spec["high"]) / 2
    micro = fixed.get("micro_batch_size", 0) if "micro_batch_size" not in params else 0
    return min(batch, float(micro)) if micro else batch

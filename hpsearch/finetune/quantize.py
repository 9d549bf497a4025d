"""4-bit and 8-bit base weights through bitsandbytes (QLoRA): the quantization config, and a clear error where it
cannot run (no CUDA GPU, or bitsandbytes missing) before any trial starts."""
from __future__ import annotations

import importlib.util
from typing import Any

import torch

from ..errors import HpsearchError
from .device import Precision


def check_quantization(kind: str, device: torch.device) -> None:
    """Raise an HpsearchError naming ``model.quantization`` when ``kind`` (4bit / 8bit) cannot run on ``device``."""
    if kind == "none":
        return
    if device.type != "cuda":
        raise HpsearchError(f"model.quantization {kind}: bitsandbytes quantization needs a CUDA GPU (the device is "
                            f"{device}); drop model.quantization to train in full or bf16 precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise HpsearchError(f"model.quantization {kind}: bitsandbytes is not installed (pip install "
                            f"'hpsearch[qlora]')")


def bnb_config(kind: str, precision: Precision) -> Any:
    """transformers' BitsAndBytesConfig: NF4 with double quantization and compute in the plan's autocast dtype
    (QLoRA's recipe) for 4bit, LLM.int8() for 8bit."""
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=precision.autocast or precision.weights)

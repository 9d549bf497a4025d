"""4-bit and 8-bit base weights through bitsandbytes (QLoRA): the quantization config. Where it cannot run (no CUDA
GPU, or bitsandbytes missing) the run's rules say so before anything starts (:mod:`hpsearch.config.rules`)."""
from __future__ import annotations

from typing import Any

from .precision import Precision


def bnb_config(kind: str, precision: Precision) -> Any:
    """transformers' BitsAndBytesConfig: NF4 with double quantization and compute in the plan's autocast dtype
    (QLoRA's recipe) for 4bit, LLM.int8() for 8bit."""
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=precision.autocast or precision.weights)

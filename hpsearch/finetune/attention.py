"""How a bidirectional encoder gets its attention mask: in the 4-D additive form SDPA takes as it is.

Given a 2-D padding mask, transformers builds the 4-D mask itself on every forward, and first asks whether the mask
can be dropped (``padding_mask.all()``): a read of the device that makes every step wait for the GPU
(``../shared/bench/ops_per_step.py`` counts it as the step's one sync). A mask given in 4-D is taken as it is. So
for a model whose attention is bidirectional SDPA built by transformers' ``masking_utils`` (BERT, RoBERTa, ELECTRA,
DistilBERT, ModernBERT ...), a forward pre-hook turns the batch's 2-D mask into ``[B, 1, 1, L]`` additive form in
the compute dtype (0 where a token is attended, the dtype's lowest value at padding): one kernel, no read of the
device, and no per-layer conversion of a boolean mask inside SDPA. The batch itself keeps the 2-D mask, which
tasks read (question answering masks its logits with it). Causal models, encoder-decoders, eager attention and
models that build their masks otherwise keep the 2-D mask.
"""
from __future__ import annotations

import sys
from typing import Any

import torch


def takes_4d_mask(model: torch.nn.Module) -> bool:
    """Whether ``model``'s attention is bidirectional SDPA whose mask transformers' ``masking_utils`` builds (then a
    4-D additive mask is used as given)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft keeps the model there
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    if any(getattr(m, "is_causal", False) is True for m in inner.modules()):
        return False
    module = sys.modules.get(type(inner.base_model).__module__) if hasattr(inner, "base_model") else None
    return module is not None and hasattr(module, "create_bidirectional_mask")


def additive_mask(model: torch.nn.Module, dtype: torch.dtype) -> Any:
    """Give ``model`` its attention mask in 4-D additive form in ``dtype`` from now on (a forward pre-hook); return
    the hook's handle (``.remove()`` it when training ends), or None for a model that takes no such mask."""
    if not takes_4d_mask(model):
        return None
    lowest: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        mask = kwargs.get("attention_mask")
        if mask is None or mask.ndim != 2:
            return args, kwargs
        if mask.device not in lowest:  # 0-d values made once: torch.where then launches one kernel
            lowest[mask.device] = (torch.zeros((), dtype=dtype, device=mask.device),
                                   torch.full((), torch.finfo(dtype).min, dtype=dtype, device=mask.device))
        zero, low = lowest[mask.device]
        return args, {**kwargs, "attention_mask": torch.where(mask.bool()[:, None, None, :], zero, low)}

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def compute_dtype(model: torch.nn.Module, autocast: torch.dtype | None) -> torch.dtype:
    """The dtype attention computes in: the autocast dtype, else the trained parameters' (fp32, or bf16-true's)."""
    if autocast is not None:
        return autocast
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32

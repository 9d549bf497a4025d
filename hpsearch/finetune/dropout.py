"""Cheaper dropout masks on the CPU: four 16-bit random lanes per 64-bit draw instead of one draw per element.

On a 2-core CPU, ``bernoulli_`` (what ``nn.Dropout`` and the attention-probability dropout run) was 10-12 % of a
fine-tuning step of all-MiniLM-L6-v2; these masks cost 2.5x less (bench/README.md). The keep probability is
``1 - round(p * 65536) / 65536``: within 8e-6 of ``1 - p``. On a GPU, native dropout is already fused and cheap,
so :func:`install` is only called for the CPU.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

ATTENTION = "hpsearch_cpu_dropout"
"""The name this module's attention function is registered under in transformers' AttentionInterface."""


def lanes(n: int, device: torch.device) -> torch.Tensor:
    """``n`` random int16 values uniform over [-32768, 32767], four to a 64-bit draw: a lane keeps with probability
    ``1 - p`` when it is at least ``round(p * 65536) - 32768``."""
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    return words.view(torch.int16)[:n]


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dropout multiplier of ``shape``: 0 with probability ``p``, ``1 / (1 - p)`` otherwise."""
    drawn = lanes(shape.numel(), device).view(shape)
    return (drawn >= round(p * 65536) - 32768).to(dtype).mul_(1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``nn.functional.dropout`` with :func:`keep_mask`."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    return x * keep_mask(x.shape, p, x.dtype, x.device)


class Dropout(torch.nn.Dropout):
    """``nn.Dropout`` with cheaper masks; keeps ``p`` (models read it, e.g. BERT passes it to attention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
              **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' eager attention with cheaper dropout while training; its SDPA kernel otherwise, in fp32.

    With dropout, the CPU's SDPA falls back to the same unfused math (softmax, bernoulli_, two matmuls) anyway.
    Without, under bf16 autocast, the CPU's fused kernel in bf16 takes 3-7x longer forward and backward than on
    fp32 copies of the same inputs (bench/results/CPU_ATTENTION.md: 16.2 against 3.3 ms a MiniLM layer, batch 16):
    attention computes in fp32 and hands back the autocast dtype.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or not module.training:
        if query.dtype in (torch.bfloat16, torch.float16):  # the CPU's fused kernel: fp32 is 3-7x faster
            mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() \
                else attention_mask
            with torch.autocast("cpu", enabled=False):  # which would cast the copies back (SDPA is on its list)
                out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask,
                                                      scaling=scaling, dropout=0.0, **kwargs)
            return out.to(query.dtype), weights
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0,
                                      **kwargs)
    n_rep = query.shape[1] // key.shape[1]  # grouped-query attention: share each key/value head
    if n_rep > 1:
        key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is None and _causal(module, kwargs) and query.shape[2] > 1:
        # No mask means SDPA's is_causal path (a decoder batch without padding): build the causal mask it implies.
        q, k = query.shape[2], key.shape[2]
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=query.device).tril(k - q)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = probs * keep_mask(probs.shape, dropout, probs.dtype, probs.device)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _causal(module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether attention is causal, by the rule transformers' SDPA function uses: the call's ``is_causal``, else
    the module's (True when the module says nothing)."""
    flag = kwargs.get("is_causal")
    return bool(getattr(module, "is_causal", True) if flag is None else flag)


def install(model: torch.nn.Module) -> bool:
    """Give ``model`` these masks: swap every ``nn.Dropout`` and, where the model takes pluggable attention
    functions (encoders and decoders alike: causal masking follows SDPA's rule), the attention; return whether
    the attention was swapped."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
    config = getattr(model, "config", None)
    if (config is None or getattr(config, "is_decoder", False)
            or not getattr(model, "_supports_attention_backend", False)
            or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager")):
        return False
    _register()
    model.set_attn_implementation(ATTENTION)
    return True


@functools.cache
def _register() -> None:
    """Make :data:`ATTENTION` known to transformers, once per process."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA takes: boolean, or none at all

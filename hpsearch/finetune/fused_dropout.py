"""Each member's own hidden dropout inside one fused pass.

Dropout is a scalar wherever a model applies it: in its ``nn.Dropout`` modules and in the ``dropout`` argument its
attention modules pass to the attention function (SDPA's ``dropout_p``). Grouping passes by dropout would leave a
searched dropout (a float: no two members alike) with nothing to fuse. So the executor (built with
:data:`SENTINEL_DROPOUT`, so that every place the setting lands can be told apart) gets:

- :class:`MemberDropout` for each dropout module: one mask for the whole pass whose k-th block of rows keeps with
  member k's probability (the cheap 16-bit lanes of :mod:`hpsearch.finetune.dropout`, a threshold per member);
- an attention function that receives the sentinel and runs the model's own attention (SDPA, or the CPU's
  cheaper-mask attention) once per run of members with equal dropout (members are ordered by dropout in a pass,
  so there are as many calls as distinct dropouts, one when they agree).

This holds for models that take pluggable attention functions (``_supports_attention_backend``: BERT, RoBERTa,
DistilBERT, ELECTRA, ModernBERT, GPT-2, Llama, Qwen2 ...) with SDPA; for any other :func:`install` changes nothing
and the fuser splits passes by dropout instead.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from .dropout import ATTENTION as CPU_ATTENTION
from .dropout import lanes
from .members import PassState

SENTINEL_DROPOUT = 0.012345678
"""The dropout the executor is built with, so that every attribute it lands in can be found and set per pass."""
PASS_ATTR = "hpsearch_pass"
"""The attribute of each executor module holding the :class:`PassState` (the attention function reads it)."""
INNER = ("sdpa", CPU_ATTENTION)
"""The attention implementations a pass can split by member dropout."""


def member_keep_mask(shape: torch.Size, dropouts: list[float], dtype: torch.dtype, device: torch.device,
                     state: PassState | None = None) -> torch.Tensor:
    """A dropout multiplier of ``shape`` (its first dimension ``K * rows``, member-major) whose k-th block of rows is
    0 with probability ``dropouts[k]`` and ``1 / (1 - dropouts[k])`` otherwise (0 for a dropout of 1); its
    per-member thresholds and scales are ``state``'s constants (made once for the members there are)."""
    k, state = len(dropouts), state or PassState()
    threshold = state.constant(tuple(min(round(p * 65536), 65536) - 32768 for p in dropouts), torch.int32, device)
    scale = state.constant(tuple(1.0 / (1.0 - p) if p < 1.0 else 0.0 for p in dropouts), dtype, device)
    return ((lanes(shape.numel(), device).view(k, -1) >= threshold.view(k, 1)).to(dtype)
            * scale.view(k, 1)).view(shape)


class MemberDropout(torch.nn.Module):
    """A dropout module of the executor: each member's rows dropped with that member's hidden dropout. ``p`` stays
    the sentinel, which attention modules read and pass on (BERT passes ``self.dropout.p``)."""

    def __init__(self, p: float, state: PassState) -> None:
        super().__init__()
        self.p, self.state = p, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropouts = self.state.dropouts
        if not self.training or not any(dropouts):
            return x
        if x.shape[0] != len(dropouts) * self.state.rows:
            raise RuntimeError(f"a fused dropout got {x.shape[0]} rows for {len(dropouts)} members of "
                               f"{self.state.rows} rows")
        return x * member_keep_mask(x.shape, dropouts, x.dtype, x.device, self.state)


def _split_attention(inner_name: str) -> Any:
    """The attention function that runs ``inner_name``'s once per run of members with one dropout."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = ALL_ATTENTION_FUNCTIONS[inner_name]

    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        state: PassState | None = getattr(module, PASS_ATTR, None)
        if dropout != SENTINEL_DROPOUT or state is None or not state.dropouts:
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        runs = state.runs()
        if len(runs) == 1:
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=runs[0][2], **kwargs)
        rows = query.shape[0]
        outs, weights = [], []
        for start, end, p in runs:
            mask = attention_mask
            if mask is not None and mask.ndim and mask.shape[0] == rows:
                mask = mask[start:end]
            out, w = inner(module, query[start:end], key[start:end], value[start:end], mask, scaling=scaling,
                           dropout=p, **kwargs)
            outs.append(out)
            weights.append(w)
        return torch.cat(outs), None if any(w is None for w in weights) else torch.cat(weights)

    return attention


@functools.cache
def _register(inner_name: str) -> str:
    """Make the split form of ``inner_name`` known to transformers, once per process; return its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    from .dropout import _register as register_cpu

    if inner_name == CPU_ATTENTION:
        register_cpu()
    name = f"hpsearch_members_{inner_name}"
    AttentionInterface.register(name, _split_attention(inner_name))
    AttentionMaskInterface.register(name, sdpa_mask)  # the masks SDPA takes, as for the inner function
    return name


def install(executor: torch.nn.Module, state: PassState) -> bool:
    """Give ``executor`` per-member hidden dropout read from ``state``; return False, changing nothing, for a model
    whose attention cannot be split (then a pass must hold members of one dropout)."""
    impl = getattr(getattr(executor, "config", None), "_attn_implementation", None)
    if not getattr(executor, "_supports_attention_backend", False) or impl not in INNER:
        return False
    name = _register(impl)
    for parent in list(executor.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Dropout) and child.p == SENTINEL_DROPOUT:
                setattr(parent, child_name, MemberDropout(child.p, state))
    for module in executor.modules():
        module.__dict__[PASS_ATTR] = state
    executor.set_attn_implementation(name)
    return True

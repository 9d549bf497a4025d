"""The executor of a fused group, assembled in one place: the model once more, built with the shared base and
:data:`SENTINEL_DROPOUT`, that runs every member's rows with that member's parameters (:mod:`.members`) and hidden
dropout (:mod:`.fused_dropout`).

:func:`assemble` is the only code that changes an executor: it freezes it (it trains nothing, so mixed precision
makes no master copy of the base), gives it the 4-D additive attention mask before the attention is swapped, swaps
every module that holds parameters for its member-aware form, and gives each member its own hidden dropout where
the model's attention can be split by member, else finds every slot the dropout setting landed in, for a pass to
set (a pass then holds members of one dropout).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .attention import additive_mask, compute_dtype
from .fused_dropout import SENTINEL_DROPOUT
from .fused_dropout import install as per_member_dropout
from .members import PassState, member_aware


@dataclass
class Executor:
    """An assembled executor and what a pass sets on it."""

    module: torch.nn.Module
    """The member-aware model (each parameter-holding module swapped), frozen, in training mode."""
    per_member_dropout: bool
    """Whether a pass applies each member's own hidden dropout (else passes hold members of one dropout)."""
    dropout_slots: list[tuple[Any, str]] = field(default_factory=list)
    """Without per-member dropout: every (object, attribute) that holds the hidden dropout."""
    mask_hook: Any = None
    """The forward pre-hook giving the model its additive attention mask (None where it takes a 2-D one)."""

    def set_dropout(self, p: float) -> None:
        """The hidden dropout of the next pass (without per-member dropout; else each member's is its own)."""
        for slot, attr in self.dropout_slots:
            setattr(slot, attr, p)

    def forward(self, **kwargs: Any) -> Any:
        """The executor as a task calls it: every position's logits (its signature takes no ``logits_to_keep``, so
        a causal LM's task passes none: the positions a member learns differ from its pass's)."""
        return self.module(**kwargs)

    __call__ = forward

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self.module.prepare_decoder_input_ids_from_labels(labels=labels)


def assemble(model: torch.nn.Module, state: PassState, dtype: torch.dtype | None) -> Executor:
    """Make ``model`` (built with the shared base and :data:`SENTINEL_DROPOUT`, no adapters) the executor of passes
    described by ``state``, under autocast ``dtype``."""
    for p in model.parameters():
        p.requires_grad_(False)
    hook = additive_mask(model, compute_dtype(model, dtype))  # before the attention swap
    member_aware(model, state)
    model.train()
    if per_member_dropout(model, state):
        return Executor(model, True, mask_hook=hook)
    return Executor(model, False, _dropout_slots(model), hook)


def _dropout_slots(model: torch.nn.Module) -> list[tuple[Any, str]]:
    """Every (object, attribute) of ``model`` and its config that holds :data:`SENTINEL_DROPOUT`: where a pass's
    hidden dropout goes."""
    slots = []
    for module in model.modules():
        for attr, value in vars(module).items():
            if isinstance(value, float) and value == SENTINEL_DROPOUT:
                slots.append((module, attr))
    return slots

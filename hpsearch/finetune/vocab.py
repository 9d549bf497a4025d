"""Train only the embedding rows the data uses, then put the full table back: same result, far less work.

A 2,000-sentence task touches a few thousand of a BERT vocabulary's 30,522 rows. With the full table trainable,
every step zero-fills, clips and AdamW-updates 11.7M embedding values (half of all-MiniLM-L6-v2) whose gradient
is zero. Rows whose gradient is always zero keep zero Adam moments, so AdamW only multiplies them by
``1 - lr * weight_decay`` each step; rows no token of the data looks up never affect a logit. So training a table
of the used rows and, afterwards, writing them back and scaling the unused rows by the product of those factors
gives the same model as training the full table (bench/README.md has the measurement).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..tasks.encoded import Encoded, PreparedData


@dataclass
class SmallVocabulary:
    """The model's full input embedding, the used ids it was cut down to, and the data renumbered to match."""

    full: torch.nn.Embedding
    small: torch.nn.Embedding
    ids: torch.Tensor
    data: PreparedData
    decay: float = 1.0
    """What AdamW's decoupled weight decay has done so far to a row whose gradient is always zero."""

    def track(self, optimizer: torch.optim.Optimizer) -> None:
        """Follow the decay ``optimizer`` applies to the small table: each step scales by ``1 - lr * weight_decay``."""
        group = next(g for g in optimizer.param_groups if any(p is self.small.weight for p in g["params"]))

        def after_step(*_: object) -> None:  # a new object each step (a graphed learning rate makes it a tensor):
            self.decay = self.decay * (1.0 - group["lr"] * group["weight_decay"])  # a kept checkpoint's stays

        optimizer.register_step_post_hook(after_step)

    def restore(self, model: torch.nn.Module) -> None:
        """Write the trained rows back into the full table, apply the decay to the others, and reinstall it."""
        with torch.no_grad():
            weight = self.full.weight
            weight.mul_(self.decay)
            weight[self.ids] = self.small.weight  # ids live on the table's device (shrink_vocabulary)
        model.set_input_embeddings(self.full)


SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
"""Config ids that models compare raw input ids with (RoBERTa's position ids look for padding; decoder
classifiers find each sequence's last token by its padding), so renumbering must leave them in place."""


def used_ids(data: PreparedData, keep_below: int = 0) -> torch.Tensor:
    """Every token id in either split (padded positions are looked up too) plus ids ``0..keep_below-1``, sorted.

    With every id below ``keep_below`` present, each of them is its own position in the result: renumbering
    maps it to itself.
    """
    ids = [data.train.input_ids.flatten(), data.validation.input_ids.flatten()]
    ids.append(torch.arange(keep_below, dtype=ids[0].dtype, device=ids[0].device))
    return torch.unique(torch.cat(ids))


def special_ids(config: object) -> list[int]:
    """The config's special token ids (an id, or a list of them, per name); none when there is no config."""
    out: list[int] = []
    for name in SPECIAL_IDS:
        value = getattr(config, name, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0:
                out.append(v)
    return out


def _renumber(enc: Encoded, lookup: torch.Tensor) -> Encoded:
    return replace(enc, input_ids=lookup[enc.input_ids])


def shrink_vocabulary(model: torch.nn.Module, data: PreparedData) -> SmallVocabulary | None:
    """Swap the model's input embedding for one holding only the rows ``data`` uses; None where that is unsafe.

    Unsafe, and left alone: an embedding that is frozen (no optimizer work to save), not a plain
    ``nn.Embedding``, shared with an output layer (its unused rows would still produce logits), or one whose
    special ids (:data:`SPECIAL_IDS`) sit so high that keeping them in place would keep most of the table.
    """
    try:
        full = model.get_input_embeddings()
        tied = model.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return None
    if tied or type(full) is not torch.nn.Embedding or not full.weight.requires_grad:
        return None
    keep_below = max(special_ids(getattr(model, "config", None)), default=-1) + 1
    if keep_below > full.num_embeddings // 2:
        return None
    ids = used_ids(data, keep_below).to(full.weight.device)
    if len(ids) >= full.num_embeddings:
        return None
    lookup = torch.zeros(full.num_embeddings, dtype=data.train.input_ids.dtype, device=data.train.input_ids.device)
    lookup[ids.to(lookup.device)] = torch.arange(len(ids), dtype=lookup.dtype, device=lookup.device)
    pad = full.padding_idx
    small_pad = int(lookup[pad]) if pad is not None and bool((ids == pad).any()) else None
    small = torch.nn.Embedding(len(ids), full.embedding_dim, padding_idx=small_pad, max_norm=full.max_norm,
                               norm_type=full.norm_type, scale_grad_by_freq=full.scale_grad_by_freq,
                               sparse=full.sparse, _weight=full.weight.detach()[ids].clone(),
                               device=full.weight.device, dtype=full.weight.dtype)
    model.set_input_embeddings(small)
    renumbered = replace(data, train=_renumber(data.train, lookup), validation=_renumber(data.validation, lookup))
    return SmallVocabulary(full=full, small=small, ids=ids, data=renumbered)

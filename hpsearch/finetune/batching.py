"""Which rows go together: length-grouped random training batches (little padding, a fresh grouping every epoch)
and length-sorted evaluation batches capped by rows and padded tokens."""
from __future__ import annotations

import math

import torch

from ..config.vocabulary import EVAL_BATCH_TOKENS

EVAL_BATCH_SIZE = 64
"""At most this many rows per evaluation batch. Measured on a 2-core CPU: batches of 32-64 length-sorted rows
evaluate 1.8x faster than 256 (cache-bound). ``model.eval_batch_tokens`` caps a batch's padded tokens too."""


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                           group: int = 50) -> list[torch.Tensor]:
    """Random batches of similar length: shuffle, sort within chunks of ``group`` batches, shuffle batch order.

    Padding shrinks to almost nothing while every epoch still sees a fresh random grouping.
    """
    order = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        idx = idx[torch.argsort(lengths[idx], descending=True, stable=True)]
        batches.extend(idx.split(batch_size))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def eval_batches(lengths: torch.Tensor, max_tokens: int = EVAL_BATCH_TOKENS,
                 max_rows: int = EVAL_BATCH_SIZE) -> list[torch.Tensor]:
    """Rows by decreasing length, cut into batches of at most ``max_rows`` rows and ``max_tokens`` padded tokens
    (a batch's first row is its longest; a row longer than the budget is a batch of its own)."""
    order = torch.argsort(lengths, descending=True, stable=True)
    sizes = lengths[order].tolist()
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(max_rows, max_tokens // max(1, sizes[start])))
        batches.append(order[start:start + rows])
        start += rows
    return batches

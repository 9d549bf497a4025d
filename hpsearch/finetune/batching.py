"""Which rows go together: length-grouped random training batches (little padding, a fresh grouping every epoch),
gathered onto the device a chunk at a time so that each step's batch is views; the few padded widths a GPU trial
takes; and length-sorted evaluation batches capped by rows and padded tokens."""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config.vocabulary import EVAL_BATCH_TOKENS
from ..tasks.encoded import Encoded

CHUNK_TOKENS = 1 << 22
"""How many tokens of training rows are gathered onto the device at once (a chunk of consecutive batches, at most
:data:`CHUNK_BATCHES`): each batch of a chunk is then views, so a step launches no gather, copy or mask kernel."""
CHUNK_BATCHES = 32


@dataclass(frozen=True)
class Batch:
    """The rows of one optimizer step: a slice of a chunk of training rows resident on the device."""

    chunk: Encoded
    rows: slice

    def __len__(self) -> int:
        return len(range(self.rows.start, self.rows.stop, self.rows.step or 1))

    def parts(self, size: int) -> list[slice]:
        """The rows in micro-batches of ``size`` (the last may be smaller)."""
        step, start, stop = self.rows.step or 1, self.rows.start, self.rows.stop
        return [slice(s, min(s + size * step, stop), step) for s in range(start, stop, size * step)]

    def share(self, rank: int, world: int) -> Batch | None:
        """Every ``world``-th row from the ``rank``-th (a process group's share; None: no row for this rank)."""
        rows = slice(self.rows.start + rank, self.rows.stop, world)
        return Batch(self.chunk, rows) if len(range(rows.start, rows.stop, world)) else None


def chunks(split: Encoded, batches: list[torch.Tensor], device: torch.device, batch_size: int,
           widths: tuple[int, ...]) -> Iterator[Batch]:
    """The epoch's ``batches`` of ``split``, a chunk of them gathered onto ``device`` at a time (with room for the
    largest of ``widths``), each as a :class:`Batch` of the chunk."""
    per_chunk = max(1, min(CHUNK_BATCHES, CHUNK_TOKENS // max(1, batch_size * split.input_ids.shape[1])))
    top = widths[-1] if widths else None
    for first in range(0, len(batches), per_chunk):
        group = batches[first:first + per_chunk]
        chunk = split.resident(torch.cat(group), device, width=top)
        start = 0
        for b in group:
            yield Batch(chunk, slice(start, start + len(b)))
            start += len(b)


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


WIDTH_BUCKETS = 8
"""How many padded widths a GPU trial's training batches take at most: few static shapes, what CUDA graphs and
shape-specialized kernels need (a new width costs an attention plan or a graph capture; bench/README.md,
"Bucketed widths"). On SST-2 at batch 16 it pads 1.22 tokens per real one (alignment 4) against 1.04 for exact
widths and 1.29 for every multiple of 8."""


def bucket_widths(lengths: torch.Tensor, batch_size: int, generator: torch.Generator, align: int,
                  buckets: int = WIDTH_BUCKETS) -> tuple[int, ...]:
    """At most ``buckets`` padded widths, each a multiple of ``align``, that cover every batch of a trial (the
    largest is the longest row, rounded up) with the fewest padded tokens over one epoch's length-grouped batches
    (drawn from a copy of ``generator``, which is left as it was): an optimal partition of the batches' longest
    rows, by dynamic programming over their distinct values."""
    draw = torch.Generator().manual_seed(0)
    draw.set_state(generator.get_state())
    rows: dict[int, int] = {}
    for b in length_grouped_batches(lengths, batch_size, draw):
        width = align * math.ceil(int(lengths[b].max()) / align)
        rows[width] = rows.get(width, 0) + len(b)
    top = align * math.ceil(int(lengths.max()) / align)
    rows.setdefault(top, 0)
    values = sorted(rows)
    counts = [0]
    for v in values:
        counts.append(counts[-1] + rows[v])
    n = len(values)
    # cost[j][i]: fewest padded tokens covering values[0..i] with j widths, the last being values[i]
    inf = float("inf")
    cost = [[inf] * n for _ in range(buckets + 1)]
    cut: list[list[int]] = [[-1] * n for _ in range(buckets + 1)]
    for i in range(n):
        cost[1][i] = values[i] * counts[i + 1]
    for j in range(2, buckets + 1):
        for i in range(n):
            cost[j][i], cut[j][i] = cost[j - 1][i], cut[j - 1][i]
            for p in range(i):
                c = cost[j - 1][p] + values[i] * (counts[i + 1] - counts[p + 1])
                if c < cost[j][i]:
                    cost[j][i], cut[j][i] = c, p
    widths, i, j = [], n - 1, buckets
    while i >= 0 and j >= 1:
        widths.append(values[i])
        i, j = cut[j][i], j - 1
    return tuple(sorted(set(widths)))


def rounded_width(widths: tuple[int, ...], longest: int) -> int:
    """The smallest of ``widths`` that holds ``longest`` tokens (``longest`` itself without widths: exact)."""
    if not widths:
        return longest
    return widths[bisect.bisect_left(widths, longest)]

"""Encoded data: what a task's ``encode`` produces and the training loop batches (:class:`Encoded`, one split;
:class:`PreparedData`, both splits with what the task needs to score them), and the helpers tasks share to build it
(a column's values, plain tokenization). Imports torch; the task modules import it lazily."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import DataError, HpsearchError


@dataclass
class RawSplit:
    """One split as the task reads it: the loaded ``datasets.Dataset`` (or rows from a CoNLL file), the columns
    resolved for it, and where it came from (for error messages)."""

    rows: Any
    columns: dict[str, str | None]
    where: str


@dataclass
class Encoded:
    """One split as tensors: right-padded ids [N, L], true lengths [N], labels [N] (or [N, L] for a label per
    token, or [N, T] for a target sequence with its own lengths in ``label_lengths``, or [N, K] of fixed width
    with ``fixed_width_labels``), optional token types.

    A task that needs more per row to score it (a question-answering window's character offsets) puts those
    tensors in ``extras``; where several rows are cut from one example (long contexts split into windows), ``example``
    gives each row's index in ``examples``, the raw examples the task scores against (contexts, gold answers).
    Every operation on rows (:meth:`take`, :meth:`head`, :func:`concat`, cross-validation folds, the on-disk cache)
    carries them, so that a new task needs no change here."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    label_lengths: torch.Tensor | None = None
    fixed_width_labels: bool = False
    """Labels are K values per row (an answer's start and end positions): never trimmed with the ids."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-row tensors (first dimension N) a task reads when it scores rows; they stay on the CPU."""
    example: torch.Tensor | None = None
    """[N]: the index in ``examples`` of the example each row was cut from (None: a row is an example)."""
    examples: list[Any] | None = None
    """The raw examples rows were cut from (JSON-able: the on-disk cache stores them), as the task wants them."""
    mask: torch.Tensor | None = None
    """[N, L] bool: every row's attention mask, precomputed where the rows are resident (:meth:`resident`), so that
    a batch of consecutive rows is views of them; None: each batch computes its own. Every other operation on rows
    drops it (it is derived)."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def example_count(self) -> int:
        """How many examples the rows hold: what a metric counts (several windows are one question)."""
        return len(self) if self.example is None else len(torch.unique(self.example))

    def batch(self, index: torch.Tensor | slice, device: torch.device,
              width: int | None = None) -> dict[str, torch.Tensor]:
        """The rows ``index`` (a CPU tensor, or a slice of resident rows) trimmed to ``width`` tokens (default: their
        longest sequence: dynamic padding), on ``device``. A slice of rows made :meth:`resident` is views: no gather,
        no copy, no mask computed."""
        lengths = self.lengths[index]
        width = width or int(lengths.max())
        if isinstance(index, slice) and self.mask is not None and self.mask.shape[1] >= width:
            out = {"input_ids": self.input_ids[index, :width], "attention_mask": self.mask[index, :width]}
            if self.token_type_ids is not None:
                out["token_type_ids"] = self.token_type_ids[index, :width]
            return out
        rows = index if isinstance(index, slice) else _moved(index, self.input_ids.device)
        lengths = lengths.to(device, non_blocking=True)
        out = {"input_ids": _widen(self.input_ids[rows, :width], width, 0).to(device, non_blocking=True),
               "attention_mask": torch.arange(width, device=device) < lengths[:, None]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = _widen(self.token_type_ids[rows, :width], width, 0).to(device, non_blocking=True)
        return out

    def labels_of(self, index: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
        """The labels of rows ``index`` on ``device`` (per-token labels trimmed like :meth:`batch`'s ids, target
        sequences to their longest, fixed-width labels whole)."""
        rows = index if isinstance(index, slice) else _moved(index, self.labels.device)
        labels = self.labels[rows]
        if labels.ndim == 2 and not self.fixed_width_labels:
            lengths = self.lengths if self.label_lengths is None else self.label_lengths
            labels = labels[:, : int(lengths[index].max())]
        return labels.to(device, non_blocking=True)

    def resident(self, index: torch.Tensor, device: torch.device, width: int | None = None) -> Encoded:
        """The rows ``index`` gathered onto ``device`` at once, with their attention masks precomputed (``width``:
        at least that many columns, for widths rounded up past the longest row), so that each batch of consecutive
        rows of it (:meth:`batch` with a slice) costs no gather, copy or mask kernel."""
        rows = self.take(index)
        columns = max(rows.input_ids.shape[1], width or 0)
        ids = _widen(rows.input_ids, columns, 0).to(device, non_blocking=True)
        types = None if rows.token_type_ids is None else _widen(rows.token_type_ids, columns, 0).to(device)
        lengths = rows.lengths.to(device, non_blocking=True)
        return replace(rows, input_ids=ids, token_type_ids=types, labels=rows.labels.to(device, non_blocking=True),
                       mask=torch.arange(columns, device=device) < lengths[:, None])

    def head(self, n: int) -> Encoded:
        """The first ``n`` examples (a fixed subset, identical in every trial): the first ``n`` rows, or every row
        cut from the first ``n`` examples."""
        if self.example is None:  # views, no copy
            return replace(self, mask=None, input_ids=self.input_ids[:n], lengths=self.lengths[:n],
                           labels=self.labels[:n],
                           token_type_ids=None if self.token_type_ids is None else self.token_type_ids[:n],
                           label_lengths=None if self.label_lengths is None else self.label_lengths[:n],
                           extras={k: v[:n] for k, v in self.extras.items()})
        first = torch.unique(self.example)[:n]
        return self.take(torch.isin(self.example, first).nonzero().flatten())

    def to(self, device: torch.device) -> Encoded:
        """A copy whose ids and labels live on ``device`` (the whole set resident on a GPU); lengths stay on the
        CPU, where batches are planned, and so do the extras, read where rows are scored."""
        tt = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return replace(self, mask=None, input_ids=self.input_ids.to(device), labels=self.labels.to(device),
                       token_type_ids=tt)

    def take(self, index: torch.Tensor) -> Encoded:
        """The rows ``index`` (a CPU tensor), in that order (``examples`` whole: the rows keep their indices)."""
        rows = index.to(self.input_ids.device)
        return replace(self, mask=None, input_ids=self.input_ids[rows], lengths=self.lengths[index],
                       labels=self.labels[rows],
                       token_type_ids=None if self.token_type_ids is None else self.token_type_ids[rows],
                       label_lengths=None if self.label_lengths is None else self.label_lengths[index],
                       extras={k: v[index] for k, v in self.extras.items()},
                       example=None if self.example is None else self.example[index])


@dataclass(frozen=True)
class Rows:
    """The rows of one evaluation batch as a task scores them: their split, their indices in it (CPU) and the
    task's options (``split.extras[name][index]``, ``split.examples``: what the task stored when it encoded)."""

    split: Encoded
    index: torch.Tensor
    options: dict[str, Any]

    def extra(self, name: str) -> torch.Tensor:
        """The batch's rows of the per-row tensor ``name``."""
        return self.split.extras[name][self.index]

    def examples(self) -> list[tuple[int, Any]]:
        """Each row's example index and raw example, in batch order."""
        if self.split.example is None or self.split.examples is None:
            raise ValueError("these rows carry no examples")
        ids = self.split.example[self.index].tolist()
        return [(i, self.split.examples[i]) for i in ids]


def _moved(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU index on ``device``: to a GPU from pinned memory without waiting for the copy (the step's kernels are
    queued behind it), so that batching never stalls the host."""
    if device.type != "cuda":
        return index.to(device)
    return index.pin_memory().to(device, non_blocking=True)


def _pad_value(parts: list[Encoded]) -> int:
    """The id a split already pads with (any position past a row's length), else 0: masked either way."""
    for e in parts:
        short = (e.lengths < e.input_ids.shape[1]).nonzero()
        if len(short):
            return int(e.input_ids[int(short[0]), -1])
    return 0


def _widen(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """``t`` right-padded with ``value`` along its second dimension to ``width``."""
    if t.ndim < 2 or t.shape[1] >= width:
        return t
    pad = [0, 0] * (t.ndim - 2) + [0, width - t.shape[1]]
    return torch.nn.functional.pad(t, pad, value=value)


def concat(parts: list[Encoded]) -> Encoded:
    """Rows of several splits of one task and tokenizer as one split: ids right-padded to the widest, per-token
    and target labels padded with the ignored label -100 (as every task pads them), extras of more than one
    dimension padded with -1, examples one list (each part's example indices shifted past the earlier ones)."""
    first = parts[0]
    width = max(e.input_ids.shape[1] for e in parts)
    pad = _pad_value(parts)
    ids = torch.cat([_widen(e.input_ids, width, pad) for e in parts])
    if first.labels.ndim == 2:
        lw = max(e.labels.shape[1] for e in parts)
        labels = torch.cat([_widen(e.labels, lw, -100) for e in parts])
    else:
        labels = torch.cat([e.labels for e in parts])
    tt = None if first.token_type_ids is None else torch.cat([_widen(e.token_type_ids, width, 0) for e in parts])
    ll = None if first.label_lengths is None else torch.cat([e.label_lengths for e in parts])
    extras = {}
    for name in first.extras:
        ew = max(e.extras[name].shape[1] for e in parts) if first.extras[name].ndim > 1 else 0
        extras[name] = torch.cat([_widen(e.extras[name], ew, -1) for e in parts])
    example, examples = None, None
    if first.example is not None:
        shifts = [0]
        for e in parts[:-1]:
            shifts.append(shifts[-1] + len(e.examples or []))
        example = torch.cat([e.example + shift for e, shift in zip(parts, shifts)])
        examples = [x for e in parts for x in (e.examples or [])]
    return Encoded(ids, torch.cat([e.lengths for e in parts]), labels, tt, ll, first.fixed_width_labels, extras,
                   example, examples)


def column_values(split: RawSplit, key: str) -> list:
    """The values of the column that ``key`` (e.g. ``text_column``) names for this split."""
    column = split.columns.get(key)
    if column not in split.rows.column_names:
        raise DataError(f"{split.where}: column '{column}' ({key}) not found; columns are "
                            f"{', '.join(split.rows.column_names)}")
    return list(split.rows[column])


def text_values(split: RawSplit, key: str, prefix: str = "") -> list[str]:
    """The texts of the column ``key`` names, each a string (``prefix`` put before it): a null is refused with its
    row, not read as an empty text (a missing answer trained as "" would teach the model to say nothing)."""
    out = []
    column = split.columns.get(key)
    for row, value in enumerate(column_values(split, key), 1):
        if not isinstance(value, str):
            what = "null (a missing value is not an empty text): fill it or drop the row" if value is None else \
                f"not a text: {value!r}"
            raise DataError(f"{split.where}: row {row}: {key} '{column}' is {what}")
        out.append(prefix + value)
    return out


def pad_id(tokenizer: Any, default: int = 0) -> int:
    """The id rows are right-padded with: the tokenizer's pad token, else ``default`` (masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else default


def padded(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids (or labels) as one int64 tensor right-padded with ``value`` to the longest row, and each row's
    length."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    out = torch.full((len(rows), int(lengths.max()) if rows else 1), value, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return out, lengths


def tokenize(tokenizer: object, texts: list[str], pairs: list[str] | None,
             max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokenize without padding, then store right-padded to the longest row: (ids, lengths, token types)."""
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    ids, lengths = padded(enc["input_ids"], pad_id(tokenizer))
    types = padded(enc["token_type_ids"], 0)[0] if pairs is not None and "token_type_ids" in enc else None
    return ids, lengths, types


@dataclass
class PreparedData:
    """Both splits, the task that encoded them, the label names its head needs (empty for regression), its options,
    and the tokenizer (not cached: tasks that generate decode with it)."""

    train: Encoded
    validation: Encoded
    task: Any
    """The task object (a :class:`hpsearch.tasks.base.Task`, which imports this module): its loss, forward pass and
    metrics."""
    label_names: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def to(self, device: torch.device) -> PreparedData:
        """Both splits resident on ``device`` (a few MB of token ids: no host-to-device copy per batch)."""
        return replace(self, train=self.train.to(device), validation=self.validation.to(device))

    @property
    def train_tokens(self) -> int:
        return int(self.train.lengths.sum())

    def fold(self, k: int, folds: int) -> PreparedData:
        """Cross-validation fold ``k`` of ``folds`` (1-based): the k-th block of training examples (as many as the
        validation set has, at most a ``folds + 1``-th of them) becomes the validation set, and the validation rows
        join the other training rows: about the same training data, judged on rows no trial was selected on
        (:mod:`hpsearch.study.confirm`)."""
        n_val, n_train = self.validation.example_count, self.train.example_count
        size = min(n_val, n_train // (folds + 1))
        if not 1 <= k <= folds or size < 1:
            raise HpsearchError(f"fold {k} of {folds}: {n_train} training examples cannot give up {folds} blocks")
        rows = torch.arange(len(self.train))
        # Rows cut from one example (question-answering windows) stay on one side.
        unit = rows if self.train.example is None else torch.unique(self.train.example, return_inverse=True)[1]
        held = (unit >= (k - 1) * size) & (unit < k * size)
        train = concat([self.train.take(rows[~held]), self.validation])
        return replace(self, train=train, validation=self.train.take(rows[held]))

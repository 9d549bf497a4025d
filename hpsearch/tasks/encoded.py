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
    token, or [N, T] for a target sequence with its own lengths in ``label_lengths``), optional token types."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    label_lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """The rows ``index`` (a CPU tensor) trimmed to their longest sequence (dynamic padding), on ``device``."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        rows = _moved(index, self.input_ids.device)
        lengths = lengths.to(device, non_blocking=True)
        out = {"input_ids": self.input_ids[rows, :width].to(device, non_blocking=True),
               "attention_mask": torch.arange(width, device=device) < lengths[:, None]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[rows, :width].to(device, non_blocking=True)
        return out

    def labels_of(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The labels of rows ``index`` on ``device`` (per-token labels trimmed like :meth:`batch`'s ids, target
        sequences to their longest)."""
        labels = self.labels[_moved(index, self.labels.device)]
        if labels.ndim == 2:
            lengths = self.lengths if self.label_lengths is None else self.label_lengths
            labels = labels[:, : int(lengths[index].max())]
        return labels.to(device, non_blocking=True)

    def head(self, n: int) -> Encoded:
        """The first ``n`` rows (a fixed subset, identical in every trial)."""
        tt = None if self.token_type_ids is None else self.token_type_ids[:n]
        ll = None if self.label_lengths is None else self.label_lengths[:n]
        return Encoded(self.input_ids[:n], self.lengths[:n], self.labels[:n], tt, ll)

    def to(self, device: torch.device) -> Encoded:
        """A copy whose ids and labels live on ``device`` (the whole set resident on a GPU); lengths stay on the
        CPU, where batches are planned."""
        tt = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return Encoded(self.input_ids.to(device), self.lengths, self.labels.to(device), tt, self.label_lengths)

    def take(self, index: torch.Tensor) -> Encoded:
        """The rows ``index`` (a CPU tensor), in that order."""
        rows = index.to(self.input_ids.device)
        tt = None if self.token_type_ids is None else self.token_type_ids[rows]
        ll = None if self.label_lengths is None else self.label_lengths[index]
        return Encoded(self.input_ids[rows], self.lengths[index], self.labels[rows], tt, ll)


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
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


def concat(parts: list[Encoded]) -> Encoded:
    """Rows of several splits of one task and tokenizer as one split: ids right-padded to the widest, per-token
    and target labels padded with the ignored label -100 (as every task pads them)."""
    width = max(e.input_ids.shape[1] for e in parts)
    pad = _pad_value(parts)
    ids = torch.cat([_widen(e.input_ids, width, pad) for e in parts])
    if parts[0].labels.ndim == 2:
        lw = max(e.labels.shape[1] for e in parts)
        labels = torch.cat([_widen(e.labels, lw, -100) for e in parts])
    else:
        labels = torch.cat([e.labels for e in parts])
    tt = None if parts[0].token_type_ids is None else torch.cat([_widen(e.token_type_ids, width, 0) for e in parts])
    ll = None if parts[0].label_lengths is None else torch.cat([e.label_lengths for e in parts])
    return Encoded(ids, torch.cat([e.lengths for e in parts]), labels, tt, ll)


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


def tokenize(tokenizer: object, texts: list[str], pairs: list[str] | None,
             max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokenize without padding, then store right-padded to the longest row: (ids, lengths, token types)."""
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    rows = enc["input_ids"]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    width = int(lengths.max()) if len(rows) else 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    types = None
    if pairs is not None and "token_type_ids" in enc:
        types = torch.zeros((len(rows), width), dtype=torch.int64)
        for i, r in enumerate(enc["token_type_ids"]):
            types[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return ids, lengths, types


@dataclass
class PreparedData:
    """Both splits, the task's name, the label names its head needs (empty for regression), its options, and the
    tokenizer (not cached: tasks that generate decode with it)."""

    train: Encoded
    validation: Encoded
    task: str
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
        """Cross-validation fold ``k`` of ``folds`` (1-based): the k-th block of training rows (as many as the
        validation set has, at most a ``folds + 1``-th of them) becomes the validation set, and the validation rows
        join the other training rows: about the same training data, judged on rows no trial was selected on
        (:mod:`hpsearch.study.confirm`)."""
        n_val, n_train = len(self.validation), len(self.train)
        size = min(n_val, n_train // (folds + 1))
        if not 1 <= k <= folds or size < 1:
            raise HpsearchError(f"fold {k} of {folds}: {n_train} training rows cannot give up {folds} blocks")
        rows = torch.arange(n_train)
        held = (rows >= (k - 1) * size) & (rows < k * size)
        train = concat([self.train.take(rows[~held]), self.validation])
        return replace(self, train=train, validation=self.train.take(rows[held]))

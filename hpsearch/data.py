"""Data: load train/validation sources with `datasets`, let the task encode them, cache the tensors on disk.

The result is a pair of :class:`Encoded` tensor sets that the training loop batches itself; what the labels are
(a class, a number, a tag per token) is the task's business (:mod:`hpsearch.tasks`). Tokenized
tensors are cached under ``$HPSEARCH_CACHE_DIR`` (default ``~/.cache/hpsearch``), keyed by tokenizer, data
file identity, columns, sample limits and max_length, so that parallel workers and resumed runs skip it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import HpsearchError
from .tasks import RawSplit, get_task

CACHE_VERSION = 2


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
        rows = index.to(self.input_ids.device)
        lengths = lengths.to(device, non_blocking=True)
        out = {"input_ids": self.input_ids[rows, :width].to(device, non_blocking=True),
               "attention_mask": torch.arange(width, device=device) < lengths[:, None]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[rows, :width].to(device, non_blocking=True)
        return out

    def labels_of(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The labels of rows ``index`` on ``device`` (per-token labels trimmed like :meth:`batch`'s ids, target
        sequences to their longest)."""
        labels = self.labels[index.to(self.labels.device)]
        if labels.ndim == 2:
            lengths = self.lengths if self.label_lengths is None else self.label_lengths
            labels = labels[:, : int(lengths[index].max())]
        return labels.to(device, non_blocking=True)

    def head(self, n: int) -> "Encoded":
        """The first ``n`` rows (a fixed subset, identical in every trial)."""
        tt = None if self.token_type_ids is None else self.token_type_ids[:n]
        ll = None if self.label_lengths is None else self.label_lengths[:n]
        return Encoded(self.input_ids[:n], self.lengths[:n], self.labels[:n], tt, ll)

    def to(self, device: torch.device) -> "Encoded":
        """A copy whose ids and labels live on ``device`` (the whole set resident on a GPU); lengths stay on the
        CPU, where batches are planned."""
        tt = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return Encoded(self.input_ids.to(device), self.lengths, self.labels.to(device), tt, self.label_lengths)

    def take(self, index: torch.Tensor) -> "Encoded":
        """The rows ``index`` (a CPU tensor), in that order."""
        rows = index.to(self.input_ids.device)
        tt = None if self.token_type_ids is None else self.token_type_ids[rows]
        ll = None if self.label_lengths is None else self.label_lengths[index]
        return Encoded(self.input_ids[rows], self.lengths[index], self.labels[rows], tt, ll)


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

    def to(self, device: torch.device) -> "PreparedData":
        """Both splits resident on ``device`` (a few MB of token ids: no host-to-device copy per batch)."""
        return replace(self, train=self.train.to(device), validation=self.validation.to(device))

    @property
    def train_tokens(self) -> int:
        return int(self.train.lengths.sum())

    def fold(self, k: int, folds: int) -> "PreparedData":
        """Cross-validation fold ``k`` of ``folds`` (1-based): the k-th block of training rows (as many as the
        validation set has, at most a ``folds + 1``-th of them) becomes the validation set, and the validation rows
        join the other training rows: about the same training data, judged on rows no trial was selected on
        (:mod:`hpsearch.confirm`)."""
        n_val, n_train = len(self.validation), len(self.train)
        size = min(n_val, n_train // (folds + 1))
        if not 1 <= k <= folds or size < 1:
            raise HpsearchError(f"fold {k} of {folds}: {n_train} training rows cannot give up {folds} blocks")
        rows = torch.arange(n_train)
        held = (rows >= (k - 1) * size) & (rows < k * size)
        train = concat([self.train.take(rows[~held]), self.validation])
        return replace(self, train=train, validation=self.train.take(rows[held]))


def load_source(src: dict) -> Any:
    """A `datasets.Dataset` for one source: a local csv/tsv/json/jsonl/parquet file or a hub dataset split."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if "hub" in src:
            return datasets.load_dataset(src["hub"], src.get("config"), split=src["split"],
                                         revision=src.get("revision"))
        fmt = src["format"]
        if fmt == "conll":
            return read_conll(Path(src["path"]).expanduser(), src["tokens_column"], src["tags_column"])
        kwargs: dict[str, Any] = {}
        if fmt == "tsv":
            # Quoting off: SST-2 and most TSV corpora contain bare quote characters inside sentences.
            kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        builder = {"tsv": "csv", "jsonl": "json"}.get(fmt, fmt)
        return datasets.load_dataset(builder, data_files=str(Path(src["path"]).expanduser()), split="train",
                                     **kwargs)
    except Exception as exc:  # datasets raises many types; the user needs the source and the reason
        where = src.get("path") or f"{src.get('hub')} ({src.get('config')}, {src.get('split')})"
        raise HpsearchError(f"cannot load data from {where}: {exc}") from exc


def read_conll(path: Path, tokens_column: str, tags_column: str) -> Any:
    """A CoNLL file as a `datasets.Dataset` of word lists and tag lists: a word per line with its tag in the last
    column, sentences separated by blank lines, ``-DOCSTART-`` lines skipped."""
    import datasets

    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append(words)
                    tags.append(labels)
                words, labels = [], []
                continue
            if len(fields) < 2:
                raise ValueError(f"line {number}: expected a word and a tag, got {line.strip()!r}")
            words.append(fields[0])
            labels.append(fields[-1])
    if words:
        sentences.append(words)
        tags.append(labels)
    return datasets.Dataset.from_dict({tokens_column: sentences, tags_column: tags})


def column_values(split: RawSplit, key: str) -> list:
    """The values of the column that ``key`` (e.g. ``text_column``) names for this split."""
    column = split.columns.get(key)
    if column not in split.rows.column_names:
        raise HpsearchError(f"{split.where}: column '{column}' ({key}) not found; columns are "
                            f"{', '.join(split.rows.column_names)}")
    return list(split.rows[column])


def tokenize(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
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


def _source_identity(src: dict) -> dict:
    if "hub" in src:
        return {k: src.get(k) for k in ("hub", "config", "split", "revision")}
    p = Path(src["path"]).expanduser().resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": src["format"]}


def _columns(data: dict, src: dict) -> dict:
    """The task's columns for one source: the source's own names, else the data section's."""
    return {c.key: src.get(c.key, data.get(c.key)) for c in get_task(data["task"]).columns}


def task_options(data: dict) -> dict[str, Any]:
    """The task's options (``label_all_tokens`` ...), from the data section or their defaults."""
    return {k: data.get(k, v) for k, v in get_task(data["task"]).options.items()}


def cache_key(data: dict, tokenizer: Any, max_length: int) -> str:
    """Hash of everything the tokenized tensors depend on."""
    vocab_hash = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    body = {
        "v": CACHE_VERSION,
        "tokenizer": [type(tokenizer).__name__, vocab_hash, getattr(tokenizer, "do_lower_case", None)],
        "max_length": max_length,
        "task": data["task"],
        "options": task_options(data),
        "train": [_source_identity(data["train"]), _columns(data, data["train"]), data.get("max_train_samples")],
        "validation": [_source_identity(data["validation"]), _columns(data, data["validation"]),
                       data.get("max_eval_samples")],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """Where tokenized data is cached: $HPSEARCH_CACHE_DIR or ~/.cache/hpsearch."""
    return Path(os.environ.get("HPSEARCH_CACHE_DIR") or Path.home() / ".cache" / "hpsearch") / "tokenized"


def _save(path: Path, prepared: PreparedData) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for split in ("train", "validation"):
        enc: Encoded = getattr(prepared, split)
        tensors[f"{split}.input_ids"] = enc.input_ids
        tensors[f"{split}.lengths"] = enc.lengths
        tensors[f"{split}.labels"] = enc.labels
        if enc.token_type_ids is not None:
            tensors[f"{split}.token_type_ids"] = enc.token_type_ids
        if enc.label_lengths is not None:
            tensors[f"{split}.label_lengths"] = enc.label_lengths
    meta = {"task": prepared.task, "label_names": json.dumps(prepared.label_names),
            "options": json.dumps(prepared.options)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> PreparedData:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    splits = {
        s: Encoded(t[f"{s}.input_ids"], t[f"{s}.lengths"], t[f"{s}.labels"], t.get(f"{s}.token_type_ids"),
                   t.get(f"{s}.label_lengths"))
        for s in ("train", "validation")
    }
    return PreparedData(splits["train"], splits["validation"], meta["task"], json.loads(meta["label_names"]),
                        json.loads(meta.get("options", "{}")))


def prepare(data: dict, tokenizer: Any, max_length: int, use_cache: bool = True) -> PreparedData:
    """Load, label-encode and tokenize both splits described by a space's ``data`` section (cached)."""
    path = cache_dir() / f"{cache_key(data, tokenizer, max_length)}.safetensors"
    if use_cache and path.is_file():
        try:
            return replace(_load(path), tokenizer=tokenizer)
        except Exception:  # a corrupt or foreign cache file is rebuilt, never fatal
            pass
    raw = {}
    for split, limit_key in (("train", "max_train_samples"), ("validation", "max_eval_samples")):
        src = data[split]
        where = f"data.{split} ({src.get('path') or src.get('hub')})"
        cols = _columns(data, src)
        ds = load_source({**src, **cols})
        limit = data.get(limit_key)
        if limit is not None and limit < len(ds):
            ds = ds.select(range(limit))
        if len(ds) == 0:
            raise HpsearchError(f"{where}: no rows")
        raw[split] = RawSplit(ds, cols, where)
    task = get_task(data["task"])
    options = task_options(data)
    train, validation, names = task.encode(raw["train"], raw["validation"], tokenizer, max_length, options)
    prepared = PreparedData(train, validation, data["task"], names, options, tokenizer)
    if use_cache:
        try:
            _save(path, prepared)
        except OSError:
            pass  # a read-only cache directory only costs the next run a re-tokenization
    return prepared

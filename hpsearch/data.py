"""Data: load train/validation sources with `datasets`, encode labels, tokenize once, cache on disk.

The result is a pair of :class:`Encoded` tensor sets that the training loop batches itself. Tokenized
tensors are cached under ``$HPSEARCH_CACHE_DIR`` (default ``~/.cache/hpsearch``), keyed by tokenizer, data
file identity, columns, sample limits and max_length, so that parallel workers and resumed runs skip it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import HpsearchError

CACHE_VERSION = 1


@dataclass
class Encoded:
    """One split as tensors: right-padded ids [N, L], true lengths [N], labels [N], optional token types."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None

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
        """The labels of rows ``index`` on ``device``."""
        return self.labels[index.to(self.labels.device)].to(device, non_blocking=True)

    def head(self, n: int) -> "Encoded":
        """The first ``n`` rows (a fixed subset, identical in every trial)."""
        tt = None if self.token_type_ids is None else self.token_type_ids[:n]
        return Encoded(self.input_ids[:n], self.lengths[:n], self.labels[:n], tt)

    def to(self, device: torch.device) -> "Encoded":
        """A copy whose ids and labels live on ``device`` (the whole set resident on a GPU); lengths stay on the
        CPU, where batches are planned."""
        tt = None if self.token_type_ids is None else self.token_type_ids.to(device)
        return Encoded(self.input_ids.to(device), self.lengths, self.labels.to(device), tt)


@dataclass
class PreparedData:
    """Both splits plus what the model head needs: the label names (classification) or one output (regression)."""

    train: Encoded
    validation: Encoded
    task: str
    label_names: list[str]

    def to(self, device: torch.device) -> "PreparedData":
        """Both splits resident on ``device`` (a few MB of token ids: no host-to-device copy per batch)."""
        return PreparedData(self.train.to(device), self.validation.to(device), self.task, self.label_names)

    @property
    def num_labels(self) -> int:
        return 1 if self.task == "regression" else len(self.label_names)

    @property
    def train_tokens(self) -> int:
        return int(self.train.lengths.sum())


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


def _texts(ds: Any, column: str | None, where: str) -> list[str] | None:
    if column is None:
        return None
    if column not in ds.column_names:
        raise HpsearchError(f"{where}: column '{column}' not found; columns are {', '.join(ds.column_names)}")
    return ["" if t is None else str(t) for t in ds[column]]


def encode_labels(train_raw: list, eval_raw: list, task: str, where: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Map raw labels to ids (classification: sorted distinct train values) or floats (regression)."""
    if task == "regression":
        try:
            return (torch.tensor([float(v) for v in train_raw], dtype=torch.float32),
                    torch.tensor([float(v) for v in eval_raw], dtype=torch.float32), [])
        except (TypeError, ValueError) as exc:
            raise HpsearchError(f"{where}: regression labels must be numbers ({exc})") from None
    if any(v is None for v in train_raw) or any(v is None for v in eval_raw):
        raise HpsearchError(f"{where}: the label column has empty values")
    names = sorted(set(train_raw), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise HpsearchError(f"{where}: classification needs at least 2 distinct labels in train, found {names}")
    index = {v: i for i, v in enumerate(names)}
    unknown = sorted({str(v) for v in eval_raw if v not in index})
    if unknown:
        raise HpsearchError(f"{where}: validation labels not seen in train: {', '.join(unknown[:10])}")
    return (torch.tensor([index[v] for v in train_raw]), torch.tensor([index[v] for v in eval_raw]),
            [str(v) for v in names])


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
    return {k: src.get(k, data.get(k)) for k in ("text_column", "text_pair_column", "label_column")}


def cache_key(data: dict, tokenizer: Any, max_length: int) -> str:
    """Hash of everything the tokenized tensors depend on."""
    vocab_hash = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    body = {
        "v": CACHE_VERSION,
        "tokenizer": [type(tokenizer).__name__, vocab_hash, getattr(tokenizer, "do_lower_case", None)],
        "max_length": max_length,
        "task": data["task"],
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
    meta = {"task": prepared.task, "label_names": json.dumps(prepared.label_names)}
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
        s: Encoded(t[f"{s}.input_ids"], t[f"{s}.lengths"], t[f"{s}.labels"], t.get(f"{s}.token_type_ids"))
        for s in ("train", "validation")
    }
    return PreparedData(splits["train"], splits["validation"], meta["task"], json.loads(meta["label_names"]))


def prepare(data: dict, tokenizer: Any, max_length: int, use_cache: bool = True) -> PreparedData:
    """Load, label-encode and tokenize both splits described by a space's ``data`` section (cached)."""
    path = cache_dir() / f"{cache_key(data, tokenizer, max_length)}.safetensors"
    if use_cache and path.is_file():
        try:
            return _load(path)
        except Exception:  # a corrupt or foreign cache file is rebuilt, never fatal
            pass
    raw = {}
    for split, limit_key in (("train", "max_train_samples"), ("validation", "max_eval_samples")):
        src = data[split]
        where = f"data.{split} ({src.get('path') or src.get('hub')})"
        ds = load_source(src)
        limit = data.get(limit_key)
        if limit is not None and limit < len(ds):
            ds = ds.select(range(limit))
        if len(ds) == 0:
            raise HpsearchError(f"{where}: no rows")
        cols = _columns(data, src)
        texts = _texts(ds, cols["text_column"], where)
        pairs = _texts(ds, cols["text_pair_column"], where)
        if cols["label_column"] not in ds.column_names:
            raise HpsearchError(f"{where}: label column '{cols['label_column']}' not found; "
                                f"columns are {', '.join(ds.column_names)}")
        raw[split] = (texts, pairs, ds[cols["label_column"]], where)
    train_labels, eval_labels, names = encode_labels(raw["train"][2], raw["validation"][2], data["task"],
                                                     "data")
    encoded = {}
    for split, labels in (("train", train_labels), ("validation", eval_labels)):
        ids, lengths, types = tokenize(tokenizer, raw[split][0], raw[split][1], max_length)
        encoded[split] = Encoded(ids, lengths, labels, types)
    prepared = PreparedData(encoded["train"], encoded["validation"], data["task"], names)
    if use_cache:
        try:
            _save(path, prepared)
        except OSError:
            pass  # a read-only cache directory only costs the next run a re-tokenization
    return prepared

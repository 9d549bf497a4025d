"""Data: load train/validation sources with `datasets`, let the task encode them, cache the tensors on disk.

The result is a :class:`~hpsearch.tasks.encoded.PreparedData`, a pair of encoded tensor sets that the training loop
batches itself; what the labels are (a class, a number, a tag per token) is the task's business
(:mod:`hpsearch.tasks`). Tokenized tensors are cached under ``$HPSEARCH_CACHE_DIR`` (default
``~/.cache/hpsearch``), keyed by tokenizer, data file identity, columns, sample limits and max_length, so that
parallel workers and resumed runs skip it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config.sections import DataSection, Source
from ..errors import DataError
from ..tasks import get_task
from ..tasks.encoded import Encoded, PreparedData, RawSplit

CACHE_VERSION = 3


def load_source(src: Source) -> Any:
    """A `datasets.Dataset` for one source: a local csv/tsv/json/jsonl/parquet file or a hub dataset split."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if src.hub is not None:
            return datasets.load_dataset(src.hub, src.config, split=src.split, revision=src.revision)
        if src.format == "conll":
            return read_conll(Path(src.path).expanduser(), src.columns["tokens_column"], src.columns["tags_column"])
        kwargs: dict[str, Any] = {}
        if src.format == "tsv":
            # Quoting off: SST-2 and most TSV corpora contain bare quote characters inside sentences.
            kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        builder = {"tsv": "csv", "jsonl": "json"}.get(src.format, src.format)
        return datasets.load_dataset(builder, data_files=str(Path(src.path).expanduser()), split="train", **kwargs)
    except Exception as exc:  # datasets raises many types; the user needs the source and the reason
        raise DataError(f"cannot load data from {src.where}: {exc}") from exc


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


def _source_identity(src: Source) -> dict:
    if src.hub is not None:
        return src.identity()
    p = Path(src.path).expanduser().resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": src.format}


def cache_key(data: DataSection, tokenizer: Any, max_length: int) -> str:
    """Hash of everything the tokenized tensors depend on."""
    vocab_hash = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    body = {
        "v": CACHE_VERSION,
        "tokenizer": [type(tokenizer).__name__, vocab_hash, getattr(tokenizer, "do_lower_case", None)],
        "max_length": max_length,
        "task": data.task.name,
        "options": dict(data.options),
        "train": [_source_identity(data.train), dict(data.train.columns), data.max_train_samples],
        "validation": [_source_identity(data.validation), dict(data.validation.columns), data.max_eval_samples],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """Where tokenized data is cached: $HPSEARCH_CACHE_DIR or ~/.cache/hpsearch."""
    return Path(os.environ.get("HPSEARCH_CACHE_DIR") or Path.home() / ".cache" / "hpsearch") / "tokenized"


def _save(path: Path, prepared: PreparedData) -> None:
    """Both splits as one safetensors file (a split's raw examples as UTF-8 JSON bytes: no header size limit),
    written atomically."""
    from safetensors.torch import save_file

    tensors, layout = {}, {}
    for split in ("train", "validation"):
        enc: Encoded = getattr(prepared, split)
        tensors[f"{split}.input_ids"] = enc.input_ids
        tensors[f"{split}.lengths"] = enc.lengths
        tensors[f"{split}.labels"] = enc.labels
        for name, value in (("token_type_ids", enc.token_type_ids), ("label_lengths", enc.label_lengths),
                            ("example", enc.example), *((f"extra.{k}", v) for k, v in enc.extras.items())):
            if value is not None:
                tensors[f"{split}.{name}"] = value.contiguous()
        if enc.examples is not None:
            tensors[f"{split}.examples"] = torch.frombuffer(bytearray(json.dumps(enc.examples).encode()),
                                                            dtype=torch.uint8)
        layout[split] = {"fixed_width_labels": enc.fixed_width_labels}
    meta = {"task": prepared.task.name, "label_names": json.dumps(prepared.label_names),
            "options": json.dumps(prepared.options), "layout": json.dumps(layout)}
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
    layout = json.loads(meta["layout"])
    splits = {}
    for s in ("train", "validation"):
        examples = t.get(f"{s}.examples")
        splits[s] = Encoded(
            t[f"{s}.input_ids"], t[f"{s}.lengths"], t[f"{s}.labels"], t.get(f"{s}.token_type_ids"),
            t.get(f"{s}.label_lengths"), layout[s]["fixed_width_labels"],
            {k[len(f"{s}.extra."):]: v for k, v in t.items() if k.startswith(f"{s}.extra.")}, t.get(f"{s}.example"),
            None if examples is None else json.loads(examples.numpy().tobytes().decode()))
    return PreparedData(splits["train"], splits["validation"], get_task(meta["task"]), json.loads(meta["label_names"]),
                        json.loads(meta.get("options", "{}")))


def _raw_split(data: DataSection, split: str, limit: int | None) -> RawSplit:
    """One split's rows as the task reads them (its first ``limit`` rows); no rows at all is a DataError."""
    src: Source = getattr(data, split)
    where = f"data.{split} ({src.path or src.hub})"
    ds = load_source(src)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    if len(ds) == 0:
        raise DataError(f"{where}: no rows")
    return RawSplit(ds, dict(src.columns), where)


def prepare_test(data: DataSection, tokenizer: Any, max_length: int) -> Encoded:
    """``data.test`` encoded as validation is (the label names come from the training split, and a test label
    never seen in training is an error with its row); not cached: it is scored once per model."""
    if data.test is None:
        raise ValueError("the space has no data.test")
    train, test = _raw_split(data, "train", data.max_train_samples), _raw_split(data, "test", None)
    return data.task.encode(train, test, tokenizer, max_length, dict(data.options))[1]


def prepare(data: DataSection, tokenizer: Any, max_length: int, use_cache: bool = True) -> PreparedData:
    """Load, label-encode and tokenize both splits described by a space's ``data`` section (cached)."""
    path = cache_dir() / f"{cache_key(data, tokenizer, max_length)}.safetensors"
    if use_cache and path.is_file():
        try:
            return replace(_load(path), tokenizer=tokenizer)
        except Exception:  # a corrupt or foreign cache file is rebuilt, never fatal
            pass
    train = _raw_split(data, "train", data.max_train_samples)
    validation = _raw_split(data, "validation", data.max_eval_samples)
    options = dict(data.options)
    train, validation, names = data.task.encode(train, validation, tokenizer, max_length, options)
    prepared = PreparedData(train, validation, data.task, names, options, tokenizer)
    if use_cache:
        try:
            _save(path, prepared)
        except OSError:
            pass  # a read-only cache directory only costs the next run a re-tokenization
    return prepared

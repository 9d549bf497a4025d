"""Data loading: every file format, differing column names, string labels, regression, the tokenized cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpsearch.config.sections import DataSection, ModelSection
from hpsearch.errors import HpsearchError
from hpsearch.finetune import data as D
from hpsearch.finetune.model import load_tokenizer
from tests.helpers import sentences


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    import pandas as pd

    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        df.to_parquet(path)
    return path


def _data(train: Path, dev: Path, fmt: str, task: str = "classification", **extra) -> DataSection:
    return DataSection.from_dict({"task": task, "train": {"path": str(train), "format": fmt},
                                  "validation": {"path": str(dev), "format": fmt},
            "text_column": "text", "text_pair_column": None, "label_column": "label",
            "max_train_samples": None, "max_eval_samples": None, **extra})


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_every_format_with_string_labels(fmt: str, tmp_path: Path, tiny_model: Path) -> None:
    names = {0: "neg", 1: "pos"}
    rows = [{"text": t, "label": names[y]} for y, t in sentences(40, 3)]
    train = _write(tmp_path / f"train.{fmt}", rows[:30], fmt)
    dev = _write(tmp_path / f"dev.{fmt}", rows[30:], fmt)
    prepared = D.prepare(_data(train, dev, fmt), load_tokenizer(ModelSection(str(tiny_model))), 16)
    assert prepared.label_names == ["neg", "pos"] and len(prepared.train) == 30 and len(prepared.validation) == 10
    expected = [1 if r["label"] == "pos" else 0 for r in rows[30:]]
    assert prepared.validation.labels.tolist() == expected


def test_tsv_with_different_text_columns_and_sample_limits(tiny_data: dict, tiny_model: Path) -> None:
    data = {"task": "classification", "label_column": "label", "text_pair_column": None, "text_column": "x",
            "train": {"path": str(tiny_data["train"]), "format": "tsv", "text_column": "sentence"},
            "validation": {"path": str(tiny_data["dev"]), "format": "tsv", "text_column": "content"},
            "max_train_samples": 50, "max_eval_samples": 20}
    prepared = D.prepare(DataSection.from_dict(data), load_tokenizer(ModelSection(str(tiny_model))), 32)
    assert (len(prepared.train), len(prepared.validation)) == (50, 20)
    assert prepared.label_names == ["0", "1"]
    assert int(prepared.train.lengths.max()) <= 32 and int(prepared.train.lengths.min()) >= 3


def test_text_pairs_get_token_types(tmp_path: Path, tiny_model: Path) -> None:
    rows = [{"text": t, "second": "the movie", "label": y} for y, t in sentences(20, 4)]
    train = _write(tmp_path / "t.csv", rows, "csv")
    prepared = D.prepare(_data(train, train, "csv", text_pair_column="second"),
                         load_tokenizer(ModelSection(str(tiny_model))), 32)
    assert prepared.train.token_type_ids is not None and int(prepared.train.token_type_ids.max()) == 1


def test_regression_labels_are_floats(tmp_path: Path, tiny_model: Path) -> None:
    rows = [{"text": t, "label": y * 2.5 + 0.25} for y, t in sentences(20, 5)]
    train = _write(tmp_path / "r.csv", rows, "csv")
    tokenizer = load_tokenizer(ModelSection(str(tiny_model)))
    prepared = D.prepare(_data(train, train, "csv", task="regression"), tokenizer, 16)
    assert prepared.label_names == [] and prepared.train.labels.dtype == torch.float32
    assert set(prepared.train.labels.tolist()) == {0.25, 2.75}


def test_validation_label_unseen_in_train_is_an_error(tmp_path: Path, tiny_model: Path) -> None:
    train = _write(tmp_path / "a.csv", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}], "csv")
    dev = _write(tmp_path / "b.csv", [{"text": "meh", "label": "neutral"}], "csv")
    with pytest.raises(HpsearchError, match="neutral"):
        D.prepare(_data(train, dev, "csv"), load_tokenizer(ModelSection(str(tiny_model))), 16)


def test_tokenized_data_is_cached_and_keyed(tiny_data: dict, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"task": "classification", "label_column": "label", "text_pair_column": None, "text_column": "sentence",
           "train": {"path": str(tiny_data["train"]), "format": "tsv"},
           "validation": {"path": str(tiny_data["train"]), "format": "tsv"},
           "max_train_samples": None, "max_eval_samples": 10}
    data = DataSection.from_dict(raw)
    tok = load_tokenizer(ModelSection(str(tiny_model)))
    first = D.prepare(data, tok, 32)
    calls = []
    monkeypatch.setattr(D, "load_source", lambda src: calls.append(src) or (_ for _ in ()).throw(AssertionError))
    second = D.prepare(data, tok, 32)  # served from the cache: load_source is never called
    assert calls == [] and torch.equal(first.train.input_ids, second.train.input_ids)
    assert second.label_names == first.label_names
    assert D.cache_key(data, tok, 32) != D.cache_key(data, tok, 16)
    assert D.cache_key(data, tok, 32) != D.cache_key(DataSection.from_dict({**raw, "max_eval_samples": 11}), tok, 32)

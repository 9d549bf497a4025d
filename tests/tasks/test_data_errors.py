"""Bad rows a new user's data has: one-line errors naming the split, the file, the row (counted from 1) and the
value, exit 2, nothing stored; never a null read as an empty text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.tasks.test_tasks import sft_rows, sft_space


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _refused(hpsearch, space: dict, tmp_path: Path, *expected: str) -> str:
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(space))
    res = hpsearch("run", "--space", str(file), "--trials", "1", "--device", "cpu")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
    for text in expected:
        assert text in res.stderr, (text, res.stderr)
    assert not (tmp_path / "studies.db").exists()  # nothing stored
    return res.stderr


@pytest.mark.parametrize("column", ["answer", "instruction"])
def test_a_null_causal_lm_response_or_prompt_is_refused_with_its_row(column: str, tiny_decoders, hpsearch,
                                                                      tmp_path: Path) -> None:
    rows = sft_rows(8, 1)
    rows[2][column] = None  # the third row
    train = _jsonl(tmp_path / "train.jsonl", rows)
    dev = _jsonl(tmp_path / "dev.jsonl", sft_rows(4, 2))
    space = sft_space(tiny_decoders["llama"], train, dev, prompt_column="instruction", response_column="answer")
    _refused(hpsearch, space, tmp_path, "data.train", "train.jsonl", "row 3:", f"'{column}' is null")


def test_an_empty_response_is_still_a_response(tiny_decoders, hpsearch, tmp_path: Path) -> None:
    rows = sft_rows(8, 1)
    rows[0]["answer"] = ""
    train, dev = _jsonl(tmp_path / "train.jsonl", rows), _jsonl(tmp_path / "dev.jsonl", sft_rows(4, 2))
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(sft_space(tiny_decoders["llama"], train, dev, prompt_column="instruction",
                                             response_column="answer")))
    hpsearch("validate", "--space", str(file), check=True)
    from hpsearch.config.load import load_space
    from hpsearch.finetune import model as M
    from hpsearch.finetune.data import prepare

    space = load_space(file)
    prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)


def test_a_null_seq2seq_target_is_refused(tiny_seq2seq, hpsearch, tmp_path: Path) -> None:
    rows = [{"source": f"summarize alice met bob {i}", "target": "alice bob"} for i in range(6)]
    rows[4]["target"] = None
    train = _jsonl(tmp_path / "train.jsonl", rows)
    dev = _jsonl(tmp_path / "dev.jsonl", rows[:2])
    space = {"study": {"name": "s2s", "pruner": "none"}, "model": {"name_or_path": str(tiny_seq2seq["t5"]),
                                                                   "max_length": 32},
             "data": {"task": "seq2seq", "train": {"path": str(train)}, "validation": {"path": str(dev)}},
             "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}, "fixed": {"epochs": 1}}
    _refused(hpsearch, space, tmp_path, "row 5:", "target_column 'target' is null")


def test_classification_rows_are_counted_from_one(make_space, hpsearch, tiny_model: Path, tmp_path: Path) -> None:
    from tests.helpers import space_dict

    good = [{"sentence": "great fun", "label": 1}, {"sentence": "dull mess", "label": 0}] * 3
    dev = _jsonl(tmp_path / "dev.jsonl", [{"content": "great", "label": 1}, {"content": "dull", "label": 0}])

    def space_with(train_rows: list[dict], dev_path: Path = dev) -> dict:
        train = _jsonl(tmp_path / "train.jsonl", train_rows)
        return space_dict(tiny_model, {"train": train, "dev": dev_path})

    null_text = [dict(r) for r in good]
    null_text[0]["sentence"] = None
    _refused(hpsearch, space_with(null_text), tmp_path, "data.train", "row 1:", "text_column 'sentence' is null")
    number_text = [dict(r) for r in good]
    number_text[5]["sentence"] = 42
    _refused(hpsearch, space_with(number_text), tmp_path, "row 6:", "not a text: 42")
    null_label = [dict(r) for r in good]
    null_label[3]["label"] = None
    _refused(hpsearch, space_with(null_label), tmp_path, "row 4: the label is null")
    unseen = _jsonl(tmp_path / "dev2.jsonl", [{"content": "great", "label": 1}, {"content": "odd", "label": 7}])
    _refused(hpsearch, space_with(good, unseen), tmp_path, "data.validation", "row 2: label 7 never occurs")


def test_regression_labels_and_unreadable_files(hpsearch, tiny_model: Path, tmp_path: Path) -> None:
    from tests.helpers import space_dict

    train = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a b", "label": 0.5}, {"sentence": "c", "label": "x"}])
    dev = _jsonl(tmp_path / "dev.jsonl", [{"content": "a", "label": 0.1}])
    space = space_dict(tiny_model, {"train": train, "dev": dev}, data__task="regression", study__metric="mse")
    _refused(hpsearch, space, tmp_path, "row 2: a regression label must be a number, got 'x'")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"sentence": "a", "label": 1}\n{"sentence": \n', encoding="utf-8")
    space = space_dict(tiny_model, {"train": broken, "dev": dev})
    _refused(hpsearch, space, tmp_path, "cannot load data from", "broken.jsonl")

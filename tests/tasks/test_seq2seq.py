"""Seq2seq (T5 and BART families): targets as labels with EOS, teacher forcing, ROUGE from generated text as the
rouge-score library computes it, generation only where it is needed, and studies through the CLI."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError
from hpsearch.finetune import evaluation as E
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import state as S
from hpsearch.finetune.checkpoints import Selection
from hpsearch.finetune.data import prepare
from hpsearch.tasks import get_task
from hpsearch.tasks.seq2seq import IGNORE
from tests.helpers import CPU, PEOPLE, PLACES, TAG_FILLER, trial_hp, write_jsonl_splits


def s2s_rows(n: int, seed: int) -> list[dict]:
    """'alice met bob in paris' -> 'alice paris': the target copies the first person and the place."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        who, other, where = rng.choice(PEOPLE), rng.choice(PEOPLE), rng.choice(PLACES)
        filler = rng.sample(TAG_FILLER, 2)
        rows.append({"document": f"{who} {filler[0]} {other} {filler[1]} {where}", "summary": f"{who} {where}"})
    return rows


@pytest.fixture
def s2s_files(tmp_path: Path) -> dict[str, Path]:
    return write_jsonl_splits(tmp_path, "s2s", s2s_rows, {"train": 96, "dev": 24})


def s2s_space(model: Path, files: dict[str, Path], **data: object) -> dict:
    return {
        "study": {"name": "s2s", "sampler": {"name": "tpe", "seed": 0}, "pruner": "none"},
        "model": {"name_or_path": str(model), "max_length": 32},
        "data": {"task": "seq2seq", "train": {"path": str(files["train"])}, "validation": {"path": str(files["dev"])},
                 "source_column": "document", "target_column": "summary", "max_new_tokens": 8, **data},
        "params": {"learning_rate": {"type": "float", "low": 5e-3, "high": 1e-2, "log": True}},
        "fixed": {"batch_size": 16, "epochs": 2, "seed": 0, "dropout": 0.0},
    }


def test_targets_become_labels_ending_in_eos_and_sources_take_the_prefix(s2s_files, tiny_seq2seq) -> None:
    space = validate(s2s_space(tiny_seq2seq["t5"], s2s_files, source_prefix="the story "))
    assert space.study.metric == "eval_loss" and space.study.direction == "minimize"
    tokenizer = M.load_tokenizer(space.model)
    data = prepare(space.data, tokenizer, 32, use_cache=False)
    row = s2s_rows(96, 1)[0]
    ids = data.train.input_ids[0, : int(data.train.lengths[0])].tolist()
    assert tokenizer.decode(ids) == "the story " + row["document"]
    label = data.train.labels[0, : int(data.train.label_lengths[0])].tolist()
    assert label == tokenizer(row["summary"])["input_ids"] + [tokenizer.eos_token_id]
    assert (data.train.labels[0, len(label):] == IGNORE).all()
    # A batch's labels are trimmed to its longest target, not to its longest source.
    idx = torch.arange(4)
    assert data.train.labels_of(idx, CPU).shape[1] == int(data.train.label_lengths[:4].max())


def test_rouge_is_the_mean_f_measure_that_rouge_score_computes(tiny_seq2seq, s2s_files) -> None:
    from rouge_score import rouge_scorer

    space = validate(s2s_space(tiny_seq2seq["t5"], s2s_files))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    pairs = [("alice went to paris", "alice paris"), ("bob rome", "bob saw rome"), ("", "carol oslo")]
    got = get_task("seq2seq").generated_metrics([pairs[:2], pairs[2:]], data)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score(gold, pred)[name].fmeasure for pred, gold in pairs) / 3
        assert got[name] == pytest.approx(expected)
    assert 0 < got["rouge1"] < 1 and got["rouge2"] < got["rouge1"]


def test_bad_generation_options_and_columns_are_validation_errors(tiny_seq2seq, s2s_files) -> None:
    with pytest.raises(ConfigError) as err:
        validate(s2s_space(tiny_seq2seq["t5"], s2s_files, num_beams=0, max_new_tokens="many",
                           target_column="abstract"))
    keys = {i.key for i in err.value.issues}
    assert keys == {"data.num_beams", "data.max_new_tokens", "data.train.target_column",
                    "data.validation.target_column"}, keys
    assert "must be an integer >= 1" in str(err.value) and "abstract" in str(err.value)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_training_lowers_the_loss_and_final_evaluation_generates(kind: str, tiny_seq2seq, s2s_files,
                                                                 monkeypatch) -> None:
    """Teacher-forced training learns; ROUGE appears on the final evaluation only (the metric is eval_loss), and
    the reported ROUGE is that of the returned model's greedy generations."""
    space = validate(s2s_space(tiny_seq2seq[kind], s2s_files))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    hp = trial_hp(space, learning_rate=1e-2, epochs=3)
    model = M.build_model(space.model, hp, data, CPU)
    before = E.evaluate(model, data.validation, data, CPU)["eval_loss"]
    assert before == pytest.approx(math.log(len(data.tokenizer)), rel=0.2)  # a random model is near chance
    generated = []
    task = get_task("seq2seq")
    real = task.generate_batch
    monkeypatch.setattr(task, "generate_batch", lambda *a: generated.append(1) or real(*a))
    result = T.train(model, data, hp, S.TrainSettings(reports_per_epoch=2, selection=Selection("eval_loss", False)),
                     device=CPU)
    assert result.metrics["eval_loss"] < before / 2
    assert [("rouge1" in h) for h in result.history] == [False] * 5 + [True]
    assert len(generated) == 1  # one batch of 24 rows, on the final evaluation only
    again = E.evaluate(model, data.validation, data, CPU, generate=True)
    assert again["rougeL"] == pytest.approx(result.metrics["rougeL"])


def test_a_rouge_metric_generates_on_every_evaluation_and_is_maximized(tiny_seq2seq, s2s_files) -> None:
    raw = s2s_space(tiny_seq2seq["t5"], s2s_files)
    raw["study"].update(metric="rougeL", trial_value="best")
    space = validate(raw)
    assert space.study.direction == "maximize"
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    model = M.build_model(space.model, trial_hp(space, learning_rate=1e-2), data, CPU)
    settings = S.TrainSettings(reports_per_epoch=2, intermediate_eval_samples=8,
                               selection=Selection.from_study(space.study))
    result = T.train(model, data, trial_hp(space, learning_rate=1e-2), settings, device=CPU)
    assert all("rougeL" in h for h in result.history)
    assert result.metrics["rougeL"] == max(h["rougeL"] for h in result.history if h["full"])


def test_seq2seq_lora_study_through_the_cli_exports_a_model_that_loads_without_peft(tiny_seq2seq, s2s_files,
                                                                                     hpsearch, tmp_path: Path) -> None:
    """LoRA through the CLI (full fine-tuning is the training tests' path): trials maximize ROUGE, export then
    train writes a merged model."""
    lora_r = 4
    raw = s2s_space(tiny_seq2seq["t5"], s2s_files)
    raw["study"]["metric"] = "rouge1"
    raw["fixed"].update(lora_r=lora_r, lora_alpha=32)
    (tmp_path / "s2s.yaml").write_text(yaml.safe_dump(raw))
    hpsearch("run", "--space", "s2s.yaml", "--trials", "2", "--quiet", check=True)
    import optuna

    study = optuna.load_study(study_name="s2s", storage=f"sqlite:///{tmp_path}/studies.db")
    assert study.direction.name == "MAXIMIZE"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    for t in done:
        assert 0.0 <= t.user_attrs["val_rouge1"] <= 1.0 and t.user_attrs["val_eval_loss"] > 0
        assert t.value == pytest.approx(t.user_attrs["val_rouge1"], abs=1e-6)
    hpsearch("export", "--study", "s2s", "--output", "best.yaml", check=True)
    hpsearch("train", "--config", "best.yaml", "--output-dir", "summarizer", "--quiet", check=True)
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "summarizer")
    assert not any("lora" in n for n, _ in model.named_parameters())
    metrics = json.loads((tmp_path / "summarizer" / "metrics.json").read_text())
    assert {"rouge1", "rouge2", "rougeL", "eval_loss"} <= set(metrics["metrics"])


def test_bleu_and_chrf_are_sacrebleu_s_corpus_scores(tiny_seq2seq, s2s_files) -> None:
    space = validate(s2s_space(tiny_seq2seq["t5"], s2s_files))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    task = get_task("seq2seq")
    same = task.generated_metrics([[("alice went to paris today", "alice went to paris today")]], data)
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    none = task.generated_metrics([[("xyz qqq", "alice went to paris today")]], data)
    assert none["bleu"] == pytest.approx(0.0) and none["chrf"] < 10
    # a corpus score, not a mean of sentence scores: one long right sentence outweighs a short wrong one
    mixed = task.generated_metrics([[("bob saw rome on a sunny day in may", "bob saw rome on a sunny day in may"),
                                     ("zz", "carol oslo")]], data)
    assert 0 < mixed["bleu"] < 100 and mixed["bleu"] > 50


def test_a_translation_study_maximizes_bleu(tiny_seq2seq, tmp_path: Path, hpsearch) -> None:
    """The shipped parallel corpus (English to Pig Latin, data/parallel-demo) on the tiny T5, searched on BLEU."""
    from tests.helpers import REPO

    raw = yaml.safe_load((REPO / "search_spaces" / "translation.yaml").read_text())
    raw["model"]["name_or_path"] = str(tiny_seq2seq["t5"])
    for split in ("train", "validation"):
        raw["data"][split]["path"] = str(REPO / raw["data"][split]["path"])
    raw["data"].update(max_train_samples=48, max_eval_samples=8, max_new_tokens=8, max_target_length=16)
    raw["model"]["max_length"] = 16
    raw["study"]["intermediate_eval_samples"] = 8
    raw["fixed"]["epochs"] = 1
    file = tmp_path / "translation.yaml"
    file.write_text(yaml.safe_dump(raw))
    hpsearch("run", "--space", str(file), "--trials", "2", "--device", "cpu", check=True)
    import optuna

    study = optuna.load_study(study_name=raw["study"]["name"], storage=f"sqlite:///{tmp_path}/studies.db")
    assert study.direction.name == "MAXIMIZE"
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(t.user_attrs["val_bleu"]) and 0.0 <= t.value <= 100.0
            assert "val_chrf" in t.user_attrs and "val_rougeL" in t.user_attrs

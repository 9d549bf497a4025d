"""The task layer: token classification (CoNLL and list columns, sub-word alignment, seqeval metrics) end to end,
and decoder models (pad token, freezing, causal attention on the CPU dropout path) as classifiers and taggers."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hpsearch.config.sections import ModelSection
from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import state as S
from hpsearch.finetune.data import prepare
from hpsearch.study.progress import Progress
from hpsearch.tasks import TASKS, get_task
from hpsearch.tasks.token_classification import IGNORE, entity_scores
from tests.helpers import CPU, tagged_sentences, trial_hp, write_conll, write_jsonl_splits


def test_every_task_declares_what_validation_and_the_loop_need() -> None:
    for name in TASKS:
        task = get_task(name)
        assert task.name == name
        assert task.default_metric in {m.name for m in task.metrics}
        assert "eval_loss" in {m.name for m in task.metrics}
        assert all(c.key.endswith("_column") for c in task.columns)
        assert task.auto_class.startswith("AutoModelFor")


# ---------------------------------------------------------------------------------------------------------------
# Token classification.


@pytest.fixture
def ner_files(tmp_path: Path) -> dict[str, Path]:
    """The same tagged sentences as CoNLL files and as JSONL with renamed columns (words / labels)."""
    train, dev = tagged_sentences(96, 1), tagged_sentences(32, 2)
    out = {"conll_train": write_conll(tmp_path / "train.conll", train),
           "conll_dev": write_conll(tmp_path / "dev.conll", dev)}
    for name, rows in (("jsonl_train", train), ("jsonl_dev", dev)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"words": w, "labels": t}) + "\n" for w, t in rows), encoding="utf-8")
        out[name] = path
    return out


def ner_space(model: Path, train: Path, dev: Path, **data: object) -> dict:
    return {
        "study": {"name": "ner", "sampler": {"name": "tpe", "seed": 0}, "pruner": "none"},
        "model": {"name_or_path": str(model), "max_length": 32},
        "data": {"task": "token_classification", "train": {"path": str(train)},
                 "validation": {"path": str(dev)}, **data},
        "params": {"learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
        "fixed": {"batch_size": 16, "epochs": 3, "seed": 0, "dropout": 0.0},
    }


def test_conll_is_read_as_sentences_with_the_last_column_as_tag(ner_files, tiny_tagger: Path) -> None:
    space = validate(ner_space(tiny_tagger, ner_files["conll_train"], ner_files["conll_dev"]))
    assert space.study.metric == "entity_f1" and space.study.direction == "maximize"
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    assert len(data.train) == 96 and len(data.validation) == 32  # -DOCSTART- and blank lines are no sentences
    assert data.label_names[0] == "O" and set(data.label_names) == {"O", "B-PER", "I-PER", "B-LOC"}
    assert data.train.labels.shape == data.train.input_ids.shape


def test_first_sub_token_carries_the_tag_unless_label_all_tokens(tmp_path: Path, tiny_tagger: Path) -> None:
    rows = [(["alice", "vanderberg", "visited", "oslo"], ["B-PER", "I-PER", "O", "B-LOC"]),
            (["bob", "met", "carol"], ["B-PER", "O", "B-PER"])]
    conll = write_conll(tmp_path / "s.conll", rows)
    tokenizer = M.load_tokenizer(ModelSection(str(tiny_tagger)))
    for label_all in (False, True):
        space = validate(ner_space(tiny_tagger, conll, conll, label_all_tokens=label_all))
        data = prepare(space.data, tokenizer, 32, use_cache=False)
        names = data.label_names
        ids = data.train.input_ids[0, : int(data.train.lengths[0])].tolist()
        pieces = tokenizer.convert_ids_to_tokens(ids)
        assert pieces == ["[CLS]", "alice", "van", "##der", "##berg", "visited", "os", "##lo", "[SEP]"]
        tags = [names[t] if t != IGNORE else None for t in data.train.labels[0, : len(ids)].tolist()]
        if label_all:
            assert tags == [None, "B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", None] \
                or tags == [None, "B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", None]
        else:
            assert tags == [None, "B-PER", "I-PER", None, None, "O", "B-LOC", None, None]


def test_words_beyond_max_length_are_truncated_and_counted(tmp_path: Path, tiny_tagger: Path, capsys) -> None:
    rows = [(["alice"] * 20, ["B-PER"] * 20), (["bob", "met", "carol"], ["B-PER", "O", "B-PER"])]
    conll = write_conll(tmp_path / "long.conll", rows)
    space = validate(ner_space(tiny_tagger, conll, conll))
    data = prepare(space.data, M.load_tokenizer(space.model), 8, use_cache=False)
    assert int(data.train.lengths.max()) == 8
    assert "1 of 2 rows longer than max_length 8 were truncated (14 words" in capsys.readouterr().err


def test_entity_metrics_follow_seqeval_default_and_strict_schemes() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"]]
    assert entity_scores(gold, pred) == pytest.approx({"entity_f1": 2 / 3, "entity_precision": 1.0,
                                                       "entity_recall": 0.5})
    # An entity that starts with I- counts under conlleval (default) matching, not under strict IOB2.
    loose = [["I-PER", "I-PER", "O", "B-LOC"]]
    assert entity_scores(gold, loose)["entity_f1"] == 1.0
    strict = entity_scores(gold, loose, "IOB2")  # only B-LOC is an entity: precision 1, recall 1/2
    assert strict == pytest.approx({"entity_f1": 2 / 3, "entity_precision": 1.0, "entity_recall": 0.5})


def test_token_metrics_skip_ignored_positions() -> None:
    task = get_task("token_classification")
    names = ["O", "B-PER", "I-PER"]
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE, 0, IGNORE]])
    logits = torch.full((1, 6, 3), -5.0)
    for pos, tag in enumerate([0, 1, 0, 2, 0, 1]):  # wrong at position 2 (I-PER predicted O) and at ignored ones
        logits[0, pos, tag] = 5.0
    metrics = task.metrics_from([task.evaluate_batch(logits, labels, None)], names, {"tag_scheme": "auto"})
    assert metrics["token_accuracy"] == pytest.approx(2 / 3)
    assert metrics["entity_precision"] == 0.0 and metrics["entity_recall"] == 0.0  # B-PER alone != B-PER I-PER
    assert metrics["eval_loss"] > 1.0


def test_integer_tags_take_their_names_from_the_dataset_features(tmp_path: Path, tiny_tagger: Path) -> None:
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC"]
    rows = tagged_sentences(16, 3)
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    ds = datasets.Dataset.from_dict({"tokens": [w for w, _ in rows], "ner_tags": [[names.index(t) for t in tags]
                                                                                   for _, tags in rows]},
                                    features=features)
    ds.to_parquet(tmp_path / "t.parquet")
    space = validate(ner_space(tiny_tagger, tmp_path / "t.parquet", tmp_path / "t.parquet"))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    assert set(data.label_names) <= set(names) and "B-PER" in data.label_names
    # Plain integers that nothing names are an error that says what to do.
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"tokens": ["alice"], "ner_tags": [1]}) + "\n", encoding="utf-8")
    space = validate(ner_space(tiny_tagger, plain, plain))
    with pytest.raises(HpsearchError, match="integers and the dataset does not name them"):
        prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)


def test_validation_names_a_missing_tags_column_and_an_unknown_scheme(ner_files, tiny_tagger: Path) -> None:
    raw = ner_space(tiny_tagger, ner_files["jsonl_train"], ner_files["jsonl_dev"], tokens_column="words",
                    tags_column="tags", tag_scheme="BIO")
    with pytest.raises(ConfigError) as err:
        validate(raw)
    text = str(err.value)
    assert "data.train.tags_column: is not a column" in text and "its columns are: words, labels (got 'tags')" in text
    assert "data.tag_scheme: must be one of auto, IOB2, IOBES, IOB1 (got 'BIO')" in text
    raw["study"]["metric"] = "accuracy"
    with pytest.raises(ConfigError, match="entity_f1"):
        validate(raw)


def test_ner_study_through_the_cli_on_conll_and_on_jsonl_with_renamed_columns(ner_files, tiny_tagger: Path,
                                                                               hpsearch, tmp_path: Path) -> None:
    spaces = {
        "conll": ner_space(tiny_tagger, ner_files["conll_train"], ner_files["conll_dev"]),
        "jsonl": ner_space(tiny_tagger, ner_files["jsonl_train"], ner_files["jsonl_dev"], tokens_column="words",
                           tags_column="labels"),
    }
    for name, raw in spaces.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        hpsearch("run", "--space", f"{name}.yaml", "--trials", "2", "--study-name", name, "--quiet", check=True)
    import optuna

    for name in spaces:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/studies.db")
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert len(done) == 2 and all("val_entity_f1" in t.user_attrs for t in done)
        assert max(t.value for t in done) > 0.5, [t.value for t in done]  # it learned the entities
    hpsearch("export", "--study", "jsonl", "--output", "best.yaml", check=True)
    hpsearch("train", "--config", "best.yaml", "--output-dir", "tagger", check=True)
    config = json.loads((tmp_path / "tagger" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"O", "B-PER", "I-PER", "B-LOC"}
    from transformers import AutoModelForTokenClassification

    assert AutoModelForTokenClassification.from_pretrained(tmp_path / "tagger").num_labels == 4


def test_token_classification_space_validates_without_torch(tmp_path: Path, ner_files, tiny_tagger: Path) -> None:
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(ner_space(tiny_tagger, ner_files["conll_train"], ner_files["conll_dev"])))
    code = ("import sys; from hpsearch.config.load import load_space; load_space(sys.argv[1]); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------------------
# Decoder models.


def decoder_space(model: Path, data: dict[str, Path], **fixed: object) -> dict:
    return {
        "study": {"name": "dec", "sampler": {"name": "tpe", "seed": 0}, "pruner": "none"},
        "model": {"name_or_path": str(model), "max_length": 32},
        "data": {"task": "classification", "train": {"path": str(data["train"]), "text_column": "sentence"},
                 "validation": {"path": str(data["dev"]), "text_column": "content"}},
        "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
        "fixed": {"batch_size": 16, "epochs": 1, "seed": 0, "dropout": 0.1, **fixed},
    }


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_decoder_gets_a_pad_token_from_eos_and_keeps_it_in_its_config(kind: str, tiny_decoders, tiny_data) -> None:
    space = validate(decoder_space(tiny_decoders[kind], tiny_data))
    tokenizer = M.load_tokenizer(space.model)
    assert tokenizer.pad_token == tokenizer.eos_token == "[SEP]"
    data = prepare(space.data, tokenizer, 32, use_cache=False)
    model = M.build_model(space.model, trial_hp(space), data, CPU)
    assert model.config.pad_token_id == tokenizer.eos_token_id
    # A padded batch classifies each row by its last real token: the same logits as the row alone.
    idx = torch.tensor([0, 1, 2, 3])
    model.eval()
    with torch.no_grad():
        together = model(**data.train.batch(idx, CPU)).logits
        alone = torch.cat([model(**data.train.batch(idx[i: i + 1], CPU)).logits for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_decoder_freezing_covers_its_embeddings_and_first_blocks(kind: str, tiny_decoders, tiny_data) -> None:
    space = validate(decoder_space(tiny_decoders[kind], tiny_data, num_frozen_layers=1))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    hp = trial_hp(space, num_frozen_layers=1, epochs=1)
    model = M.build_model(space.model, hp, data, CPU)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    embed = "embed_tokens" if kind == "llama" else "wte"
    assert any(embed in n for n in frozen), "the token embedding must be frozen"
    if kind == "gpt2":
        assert any(".wpe." in n for n in frozen), "GPT-2's position table must be frozen too"
    blocks = ".layers.0." if kind == "llama" else ".h.0."
    later = ".layers.1." if kind == "llama" else ".h.1."
    assert any(blocks in n for n in frozen) and not any(later in n for n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1), device=CPU)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in frozen)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cpu_dropout_attention_keeps_decoders_causal(kind: str, tiny_decoders, tiny_data,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Train mode, attention dropout on but every mask kept: the swapped attention must give transformers' own
    logits, for padded and for unpadded batches (where no mask is passed and causality is implied)."""
    from hpsearch.finetune import dropout as D

    space = validate(decoder_space(tiny_decoders[kind], tiny_data))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    hp = trial_hp(space, dropout=0.1)
    monkeypatch.setattr(D, "keep_mask", lambda shape, p, dtype, device: torch.ones(shape, dtype=dtype, device=device))
    ours = M.build_model(space.model, hp, data, CPU)
    assert ours.config._attn_implementation == D.ATTENTION  # the CPU path is in use
    monkeypatch.setattr(M, "install_cheap_dropout", lambda model: False)
    reference = M.build_model(space.model, hp.replace(dropout=0.0), data, CPU)
    reference.load_state_dict(ours.state_dict())
    ours.train()
    reference.train()
    lengths = data.train.lengths
    same = (lengths == lengths[0]).nonzero().flatten()[:3]
    assert len(same) >= 2
    for idx in (same, torch.arange(6)):  # all one length: no padding mask; mixed lengths: padding mask
        batch = data.train.batch(idx, CPU)
        torch.testing.assert_close(ours(**batch).logits, reference(**batch).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_decoder_classifier_and_tagger_studies_complete(kind: str, tiny_decoders, tiny_data, ner_files,
                                                        tmp_path: Path) -> None:
    from hpsearch.config.options import RunOptions
    from hpsearch.config.space import Space
    from hpsearch.study import runner

    raw = decoder_space(tiny_decoders[kind], tiny_data)
    raw["params"]["num_frozen_layers"] = {"type": "categorical", "choices": [0, 1]}
    raw["study"]["enqueue"] = [{"learning_rate": 2e-3, "num_frozen_layers": 0},
                               {"learning_rate": 2e-3, "num_frozen_layers": 1}]
    tagger = ner_space(tiny_decoders[kind], ner_files["conll_train"], ner_files["conll_dev"])
    tagger["fixed"]["epochs"] = 1
    for name, cfg in (("cls", raw), ("ner", tagger)):
        space: Space = validate(cfg)
        options = RunOptions(storage=f"sqlite:///{tmp_path}/{name}.db", trials=2, study_name=f"{kind}-{name}")
        study = runner.run_study(space, options, progress=Progress())
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"], [t.user_attrs for t in study.trials]
        if name == "cls":  # with and without frozen layers
            assert [t.params["num_frozen_layers"] for t in study.trials] == [0, 1]


# ---------------------------------------------------------------------------------------------------------------
# Causal-LM supervised fine-tuning.


def sft_rows(n: int, seed: int) -> list[dict]:
    """Instruction pairs whose answer follows from the prompt: 'alice met paris' -> 'paris'."""
    import random

    rng = random.Random(seed)
    people, places = "alice bob carol dave".split(), "paris rome oslo".split()
    rows = []
    for _ in range(n):
        who, where = rng.choice(people), rng.choice(places)
        rows.append({"instruction": f"{who} visited {where} and", "answer": f"{who} went to {where}"})
    return rows


def sft_space(model: Path, train: Path, dev: Path, **data: object) -> dict:
    return {
        "study": {"name": "sft", "sampler": {"name": "tpe", "seed": 0}, "pruner": "none"},
        "model": {"name_or_path": str(model), "max_length": 32},
        "data": {"task": "causal_lm", "train": {"path": str(train)}, "validation": {"path": str(dev)}, **data},
        "params": {"learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
        "fixed": {"batch_size": 16, "epochs": 2, "seed": 0, "dropout": 0.0},
    }


@pytest.fixture
def sft_files(tmp_path: Path) -> dict[str, Path]:
    return write_jsonl_splits(tmp_path, "sft", sft_rows, {"train": 64, "dev": 16})


def test_sft_masks_the_prompt_and_ends_with_eos(sft_files, tiny_decoders) -> None:
    space = validate(sft_space(tiny_decoders["llama"], sft_files["train"], sft_files["dev"],
                               prompt_column="instruction", response_column="answer"))
    assert space.study.metric == "eval_loss" and space.study.direction == "minimize"
    tokenizer = M.load_tokenizer(space.model)
    data = prepare(space.data, tokenizer, 32, use_cache=False)
    row = sft_rows(64, 1)[0]
    ids = data.train.input_ids[0, : int(data.train.lengths[0])].tolist()
    labels = data.train.labels[0, : len(ids)].tolist()
    prompt = tokenizer(row["instruction"])["input_ids"]
    answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tokenizer.eos_token_id]
    assert labels == [IGNORE] * len(prompt) + answer + [tokenizer.eos_token_id]
    # The loss counts only the answer and the EOS: predicting them from everything before.
    task = get_task("causal_lm")
    logits = torch.zeros(1, len(ids), len(tokenizer))
    loss, count = task.evaluate_batch(logits, data.train.labels[:1, : len(ids)], None)
    assert count == len(answer) + 1 and loss == pytest.approx(count * math.log(len(tokenizer)), rel=1e-5)


def test_sft_columns_are_checked_before_anything_runs(sft_files, tiny_decoders) -> None:
    with pytest.raises(ConfigError, match="data.response_column: is required with prompt_column"):
        validate(sft_space(tiny_decoders["llama"], sft_files["train"], sft_files["dev"], prompt_column="instruction"))
    with pytest.raises(ConfigError, match="data.train.response_column: is not a column"):
        validate(sft_space(tiny_decoders["llama"], sft_files["train"], sft_files["dev"], prompt_column="instruction",
                           response_column="reply"))


@pytest.mark.parametrize("lora_r", [0, 4])
def test_sft_study_learns_and_exports_a_causal_lm(lora_r: int, sft_files, tiny_decoders, hpsearch,
                                                  tmp_path: Path) -> None:
    raw = sft_space(tiny_decoders["llama"], sft_files["train"], sft_files["dev"], prompt_column="instruction",
                    response_column="answer")
    raw["study"]["metric"] = "perplexity"
    raw["fixed"].update(lora_r=lora_r, lora_target_modules=["q_proj", "v_proj"] if lora_r else "all-linear")
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(raw))
    hpsearch("run", "--space", "sft.yaml", "--trials", "2", "--quiet", check=True)
    import optuna

    study = optuna.load_study(study_name="sft", storage=f"sqlite:///{tmp_path}/studies.db")
    assert study.direction.name == "MINIMIZE"
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2 and all(t.user_attrs["val_eval_loss"] > 0 for t in done)
    vocab = len(M.load_tokenizer(ModelSection(str(tiny_decoders["llama"]))))
    # Below chance (perplexity = vocabulary size); full fine-tuning far below. (LoRA trains adapters on q/v only,
    # next to the tiny model's random, frozen output layer: it learns, but slowly.)
    assert study.best_value < (vocab / 2 if lora_r == 0 else vocab * 0.95), study.best_value
    hpsearch("export", "--study", "sft", "--output", "best.yaml", check=True)
    hpsearch("train", "--config", "best.yaml", "--output-dir", "lm", "--quiet", check=True)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_an_unknown_task_is_one_error_that_lists_the_tasks(tiny_model: Path, tiny_data) -> None:
    from tests.helpers import space_dict

    with pytest.raises(ConfigError) as err:
        validate(space_dict(tiny_model, tiny_data, data__task="ner"))
    assert [i.key for i in err.value.issues] == ["data.task"]
    assert "token_classification" in str(err.value) and "causal_lm" in str(err.value)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_sft_logits_only_where_learned_give_the_full_loss_and_gradients(kind: str, sft_files, tiny_decoders) -> None:
    """The causal-LM task asks the model for logits only at positions whose next token is learned; the loss, its
    gradients and the evaluation are those of the full logits."""
    from hpsearch.tasks import causal_lm as C

    space = validate(sft_space(tiny_decoders[kind], sft_files["train"], sft_files["dev"], prompt_column="instruction",
                               response_column="answer"))
    data = prepare(space.data, M.load_tokenizer(space.model), 32, use_cache=False)
    model = M.build_model(space.model, trial_hp(space), data, CPU)
    task = get_task("causal_lm")
    idx = torch.arange(8)
    batch, labels = data.train.batch(idx, CPU), data.train.labels_of(idx, CPU)
    keep = C.learned_positions(labels)
    assert keep is not None and 0 < len(keep) < labels.shape[1] - 1  # the prompts are skipped
    small = task.forward(model, batch, labels)
    assert small.shape[1] == len(keep)
    full = model(**batch).logits
    loss_small, loss_full = task.loss(small, labels), task.loss(full, labels)
    assert loss_small.item() == pytest.approx(loss_full.item(), rel=1e-5)
    grads = []
    for loss in (loss_small, loss_full):
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert task.evaluate_batch(small, labels, None) == pytest.approx(task.evaluate_batch(full, labels, None), rel=1e-5)

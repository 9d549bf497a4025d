"""Extractive question answering: windows over long contexts with the answer's token positions, span decoding
back to text over an example's windows, SQuAD's exact match and F1, SQuAD v2's unanswerable questions, bad answers
named by file, row and column, and studies through the CLI on the tiny BERT and on MiniLM."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError, DataError
from hpsearch.finetune import evaluation as E
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import state as S
from hpsearch.finetune.data import prepare
from hpsearch.tasks import get_task
from hpsearch.tasks.encoded import Rows, concat
from hpsearch.tasks.question_answering import squad_scores
from tests.helpers import CPU, PEOPLE, PLACES, REPO, TAG_FILLER, trial_hp, write_jsonl_splits

QA = get_task("question_answering")


def qa_rows(n: int, seed: int, unanswerable: float = 0.0) -> list[dict]:
    """'where is it' in a context of people and filler words with one place (oslo is two word pieces): the answer
    is the place. With ``unanswerable`` that share of contexts has no place (SQuAD v2: empty answer lists)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(PEOPLE + TAG_FILLER + ["vanderberg"]) for _ in range(rng.randint(4, 24))]
        answers: dict = {"text": [], "answer_start": []}
        if rng.random() >= unanswerable:
            place = rng.choice(PLACES)
            at = rng.randint(0, len(words))
            words.insert(at, place)
            answers = {"text": [place], "answer_start": [len(" ".join(words[:at])) + (1 if at else 0)]}
        rows.append({"id": f"q{i}", "question": "where is it", "story": " ".join(words), "answers": answers})
    return rows


@pytest.fixture
def qa_files(tmp_path: Path) -> dict[str, Path]:
    return write_jsonl_splits(tmp_path, "qa", qa_rows, {"train": 128, "dev": 32})


def qa_space(model: Path, files: dict[str, Path], **data: object) -> dict:
    return {
        "study": {"name": "qa", "sampler": {"name": "tpe", "seed": 0}, "pruner": "none"},
        "model": {"name_or_path": str(model), "max_length": 24},
        "data": {"task": "question_answering", "train": {"path": str(files["train"])},
                 "validation": {"path": str(files["dev"])}, "context_column": "story", "answers_column": "answers",
                 "doc_stride": 6, **data},
        "params": {"learning_rate": {"type": "float", "low": 5e-3, "high": 1e-2, "log": True}},
        "fixed": {"batch_size": 16, "epochs": 3, "seed": 0, "dropout": 0.0},
    }


def _prepared(model: Path, files: dict[str, Path], **data: object):
    space = validate(qa_space(model, files, **data))
    tokenizer = M.load_tokenizer(space.model)
    return space, tokenizer, prepare(space.data, tokenizer, 24, use_cache=False)


def _oracle(enc, scale: float = 30.0) -> torch.Tensor:
    """Logits that put every window's start and end on its labels."""
    logits = torch.zeros(len(enc), enc.input_ids.shape[1], 2)
    rows = torch.arange(len(enc))
    logits[rows, enc.labels[:, 0], 0] = scale
    logits[rows, enc.labels[:, 1], 1] = scale
    return logits


def _score(enc, logits: torch.Tensor, options: dict) -> dict:
    index = torch.arange(len(enc))
    part = QA.evaluate_batch(logits, enc.labels, Rows(enc, index, options))
    return QA.metrics_from([part], [], options)


# ---------------------------------------------------------------------------------------------------------------
# SQuAD's evaluation.


def test_exact_match_and_f1_follow_the_official_squad_script() -> None:
    """Cases with the official v2.0 evaluation script's per-question results (v1.1's on answerable ones):
    normalization drops case, punctuation and articles; F1 counts shared tokens; the best gold answer counts."""
    cases = [  # prediction, gold answers, exact match, F1
        ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),
        ("in 1994", ["1994"], 0.0, 2 / 3),  # precision 1/2, recall 1
        ("Carolina Panthers win", ["the Carolina Panthers"], 0.0, 0.8),  # precision 2/3, recall 1
        ("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos"], 1.0, 1.0),
        ("U.S. Navy", ["US navy"], 1.0, 1.0),
        ("rock-n-roll", ["rock n roll"], 0.0, 0.0),  # the hyphens vanish: one token 'rocknroll'
        ("", [], 1.0, 1.0),  # unanswerable, answered with nothing
        ("Paris", [], 0.0, 0.0),
        ("", ["Paris"], 0.0, 0.0),
        ("the the", ["an"], 1.0, 1.0),  # answers that normalize to nothing are dropped: gold becomes ""
        ("paris paris rome", ["paris rome rome"], 0.0, 2 / 3),  # shared tokens counted with multiplicity
    ]
    for prediction, gold, em, f1 in cases:
        one = squad_scores([prediction], [gold])
        assert one["exact_match"] == pytest.approx(100 * em) and one["f1"] == pytest.approx(100 * f1), prediction
    mean = squad_scores([c[0] for c in cases], [c[1] for c in cases])
    assert mean["exact_match"] == pytest.approx(100 * sum(c[2] for c in cases) / len(cases))
    assert mean["f1"] == pytest.approx(100 * sum(c[3] for c in cases) / len(cases))


# ---------------------------------------------------------------------------------------------------------------
# Encoding and decoding.


def test_long_contexts_become_windows_whose_labels_point_at_the_answer(qa_files, tiny_tagger: Path) -> None:
    _, tokenizer, data = _prepared(tiny_tagger, qa_files)
    enc = data.validation
    assert enc.fixed_width_labels and enc.labels.shape == (len(enc), 2)
    assert len(enc) > enc.example_count == 32  # some contexts need several windows
    rows = qa_rows(32, 2)
    hits = set()
    for i in range(len(enc)):
        example, (start, end) = int(enc.example[i]), enc.labels[i].tolist()
        answer = rows[example]["answers"]["text"][0]
        if start == int(enc.extras["cls_index"][i]):  # the answer is not (wholly) in this window
            assert end == start
            continue
        a, b = int(enc.extras["offsets"][i, start, 0]), int(enc.extras["offsets"][i, end, 1])
        assert rows[example]["story"][a:b] == answer
        hits.add(example)
        ids = enc.input_ids[i, start:end + 1].tolist()
        assert tokenizer.decode(ids).replace(" ##", "") == answer
    assert hits == set(range(32))  # every answer lies wholly inside some window (doc_stride overlaps them)
    assert (enc.extras["offsets"][:, 0] == -1).all()  # CLS and the question are not context
    assert enc.examples[0] == {"context": rows[0]["story"], "answers": rows[0]["answers"]["text"]}


def test_oracle_logits_decode_to_the_answers_over_windows(qa_files, tiny_tagger: Path) -> None:
    """Span decoding reads each example's best span over all its windows back from the context by offsets: logits
    that mark the labels score 100; a span longer than max_answer_length is never proposed."""
    _, _, data = _prepared(tiny_tagger, qa_files)
    enc, options = data.validation, data.options
    scores = _score(enc, _oracle(enc), options)
    assert scores["exact_match"] == scores["f1"] == pytest.approx(100.0) and scores["eval_loss"] < 1e-6
    # 'oslo' is two tokens: with max_answer_length 1 it cannot be predicted whole.
    short = _score(enc, _oracle(enc), {**options, "max_answer_length": 1})
    oslo = sum(r["answers"]["text"] == ["oslo"] for r in qa_rows(32, 2))
    assert 0 < oslo and short["exact_match"] == pytest.approx(100 * (32 - oslo) / 32)
    predicted = QA.predictions([QA.evaluate_batch(_oracle(enc), enc.labels, Rows(enc, torch.arange(len(enc)),
                                                                                   options))], [], options)
    assert predicted["predictions"] == [r["answers"]["text"][0] for r in qa_rows(32, 2)]


def test_the_best_span_starts_inside_the_context_ends_after_its_start_and_is_not_too_long() -> None:
    from hpsearch.tasks.question_answering import best_spans

    inside = torch.tensor([[False] + [True] * 5] * 2 + [[False] * 6])
    logits = torch.full((3, 6, 2), -5.0)
    logits[:, 0] = 50.0  # CLS: outside the context, never a span
    logits[0, 4, 0], logits[0, 2, 1], logits[0, 4, 1] = 9.0, 8.0, -4.0  # the best start comes after the best end
    logits[1, 1, 0], logits[1, 5, 1], logits[1, 4, 1] = 7.0, 7.0, -4.0  # the best span is 5 tokens long
    score, start, end = best_spans(logits, inside, n_best=6, longest=5)
    assert (float(score[0]), int(start[0]), int(end[0])) == (5.0, 4, 4)
    assert (float(score[1]), int(start[1]), int(end[1])) == (14.0, 1, 5)
    assert score[2] == -float("inf")  # no context: no span
    score, start, end = best_spans(logits, inside, n_best=6, longest=4)
    assert (float(score[1]), int(start[1]), int(end[1])) == (3.0, 1, 4)
    score, _, _ = best_spans(logits, inside, n_best=1, longest=4)  # start 4 and end 2 alone cannot pair
    assert score[0] == -float("inf")


def test_windows_labels_and_answers_equal_transformers_run_qa_recipe(qa_files, tiny_tagger: Path) -> None:
    """Against transformers' own example (run_qa.py's features, utils_qa's post-processing, as bench.qa_speed ports
    them): the same windows, the same labelled positions but for the recipe's edge case, and on random logits the
    same answers (every token a candidate on both sides, so that their n-best pools agree)."""
    import datasets

    from bench.qa_speed import _features, _postprocess

    _, tokenizer, data = _prepared(tiny_tagger, qa_files)
    for split, enc in (("train", data.train), ("dev", data.validation)):
        raw = datasets.load_dataset("json", data_files=str(qa_files[split]), split="train")
        raw = raw.rename_column("story", "context")
        hf = _features(tokenizer, raw[:], 24, 6, train=True)
        assert [r[: int(n)] for r, n in zip(hf["input_ids"], enc.lengths)] == \
            [enc.input_ids[i, : int(n)].tolist() for i, n in enumerate(enc.lengths)]
        assert hf["end_positions"] == enc.labels[:, 1].tolist()
        # Where the answer is a window's last context token, the recipe's walk to the start runs on through [SEP] and
        # the padding (their offsets are (0, 0)): the edge case its comment names, labelled there past the context.
        last = [max(t for t in range(enc.input_ids.shape[1]) if enc.extras["offsets"][i, t, 0] >= 0)
                for i in range(len(enc))]
        differ = [i for i, s in enumerate(hf["start_positions"]) if s != int(enc.labels[i, 0])]
        assert all(hf["start_positions"][i] > last[i] == int(enc.labels[i, 1]) for i in differ)
        assert len(differ) < len(enc) // 5
    features = raw.map(lambda b: _features(tokenizer, b, 24, 6, train=False), batched=True,
                       remove_columns=raw.column_names)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(enc), 24, 2, generator=generator)
    ours = QA.predictions([QA.evaluate_batch(logits[:, : enc.input_ids.shape[1]], enc.labels,
                                             Rows(enc, torch.arange(len(enc)), {**data.options, "n_best": 24,
                                                                                "max_answer_length": 3}))],
                          [], data.options)["predictions"]
    theirs = _postprocess(raw[:], features, logits[..., 0].numpy(), logits[..., 1].numpy(), n_best=24,
                          max_answer=3)
    assert ours == theirs


def test_unanswerable_questions_need_allow_no_answer_and_predict_nothing_when_cls_wins(tmp_path: Path,
                                                                                       tiny_tagger: Path) -> None:
    files = write_jsonl_splits(tmp_path, "v2", lambda n, s: qa_rows(n, s, unanswerable=0.3), {"train": 64, "dev": 32})
    with pytest.raises(DataError, match=r"data.train .*v2_train.jsonl.*: row \d+: answers_column 'answers': no "
                                        r"answer; .*allow_no_answer: true"):
        _prepared(tiny_tagger, files)
    _, _, data = _prepared(tiny_tagger, files, allow_no_answer=True)
    enc = data.validation
    empty = [i for i, e in enumerate(enc.examples) if not e["answers"]]
    assert empty
    # The oracle marks CLS for unanswerable windows: their null score wins and the answer is "".
    assert _score(enc, _oracle(enc), data.options)["exact_match"] == pytest.approx(100.0)
    # Without allow_no_answer the best span is taken even where CLS scores higher: never an empty answer.
    rows = Rows(enc, torch.arange(len(enc)), {**data.options, "allow_no_answer": False})
    strict = QA.predictions([QA.evaluate_batch(_oracle(enc), enc.labels, rows)], [], rows.options)
    assert all(strict["predictions"][i] for i in empty)


def test_flat_answer_columns_encode_as_squad_answers_do(qa_files, tmp_path: Path, tiny_tagger: Path) -> None:
    flat = {}
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in qa_files[split].read_text().splitlines()]
        flat[split] = tmp_path / f"flat_{split}.jsonl"
        flat[split].write_text("".join(json.dumps({"question": r["question"], "story": r["story"],
                                                   "answer": r["answers"]["text"][0],
                                                   "at": r["answers"]["answer_start"][0]}) + "\n" for r in rows))
    _, _, squad = _prepared(tiny_tagger, qa_files)
    _, _, plain = _prepared(tiny_tagger, flat, answers_column=None, answer_text_column="answer",
                            answer_start_column="at")
    for a, b in ((squad.train, plain.train), (squad.validation, plain.validation)):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.extras["offsets"], b.extras["offsets"]) and a.examples == b.examples


def test_windows_keep_their_extras_through_the_cache_head_take_concat_and_folds(qa_files, tiny_tagger: Path) -> None:
    space, tokenizer, fresh = _prepared(tiny_tagger, qa_files)
    prepare(space.data, tokenizer, 24)
    cached = prepare(space.data, tokenizer, 24)
    for a, b in ((fresh.train, cached.train), (fresh.validation, cached.validation)):
        assert torch.equal(a.extras["offsets"], b.extras["offsets"]) and torch.equal(a.example, b.example)
        assert a.examples == b.examples and b.fixed_width_labels
    val = fresh.validation
    head = val.head(5)  # the first 5 questions, each with all its windows
    assert head.example_count == 5 and len(head) == int((val.example < 5).sum())
    both = concat([fresh.train, val])
    assert both.example_count == 160 and both.examples[128:] == val.examples
    assert torch.equal(both.example[len(fresh.train):], val.example + 128)
    assert both.extras["offsets"].shape[1] == max(fresh.train.extras["offsets"].shape[1],
                                                  val.extras["offsets"].shape[1])
    fold = fresh.fold(1, 3)
    held = set(fold.validation.example.tolist())
    assert held and not held & set(fold.train.example.tolist())  # a question's windows stay on one side
    assert fold.validation.example_count == 32 and fold.train.example_count == 128
    assert _score(fold.validation, _oracle(fold.validation), fresh.options)["exact_match"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input.


def _bad_rows(tmp_path: Path, change) -> dict[str, Path]:
    files = write_jsonl_splits(tmp_path, "bad", qa_rows, {"train": 16, "dev": 8})
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    change(rows[2])  # the third row
    files["train"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["answers"]["answer_start"].__setitem__(0, r["answers"]["answer_start"][0] + 1),
     "answers_column 'answers': the context at character"),
    (lambda r: r["answers"]["answer_start"].__setitem__(0, -4), "answer_start -4"),
    (lambda r: r.__setitem__("answers", {"text": ["rome"]}), "must hold {text: [...], answer_start: [...]}"),
    (lambda r: r.__setitem__("story", None), "context_column 'story' is null"),
    # one fractional start makes the loader read the column as floats (every 0 a 0.0): the row and the value named
    # are the fractional one's, as written
    (lambda r: r["answers"]["answer_start"].__setitem__(0, r["answers"]["answer_start"][0] + 0.5),
     ".5 of "),
])
def test_a_bad_answer_is_one_line_naming_file_row_and_column(change, expected: str, tmp_path: Path, hpsearch,
                                                             tiny_tagger: Path) -> None:
    files = _bad_rows(tmp_path, change)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(qa_space(tiny_tagger, files)))
    res = hpsearch("run", "--space", "space.yaml", "--trials", "1", "--device", "cpu")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
    for text in ("data.train", "bad_train.jsonl", "row 3:", expected):
        assert text in res.stderr, (text, res.stderr)
    assert not (tmp_path / "studies.db").exists()


def test_columns_and_options_are_checked_before_anything_runs(qa_files, tiny_tagger: Path) -> None:
    def problems(**data: object) -> str:
        with pytest.raises(ConfigError) as info:
            validate(qa_space(tiny_tagger, qa_files, **data))
        return str(info.value)

    assert "data.answers_column" in problems(answers_column=None)
    assert "data.answer_start_column" in problems(answers_column=None, answer_text_column="a")
    assert "data.answer_text_column" in problems(answer_text_column="a", answer_start_column="b")
    assert "data.train.context_column" in problems(train={"path": str(qa_files["train"]), "context_column": "ctx"})
    assert "data.doc_stride" in problems(doc_stride=0) and "data.n_best" in problems(n_best="many")
    assert "data.allow_no_answer" in problems(allow_no_answer="yes")


def test_a_question_that_leaves_no_room_for_context_is_named(tmp_path: Path, tiny_tagger: Path) -> None:
    files = _bad_rows(tmp_path, lambda r: r.__setitem__("question", " ".join(["where"] * 20)))
    with pytest.raises(DataError, match=r"row 3: question_column 'question' is 20 tokens: with model.max_length 24 "
                                        r"and data.doc_stride 6"):
        _prepared(tiny_tagger, files)


# ---------------------------------------------------------------------------------------------------------------
# Training and studies.


def test_training_finds_the_answers(qa_files, tiny_tagger: Path) -> None:
    space, _, data = _prepared(tiny_tagger, qa_files)
    model = M.build_model(space.model, trial_hp(space), data, CPU)
    before = E.evaluate(model, data.validation, data, CPU)
    result = T.train(model, data, trial_hp(space, learning_rate=1e-2, epochs=4), S.TrainSettings(), device=CPU)
    after = result.metrics
    assert after["eval_loss"] < before["eval_loss"] - 0.5
    assert after["f1"] > before["f1"] + 30 and after["exact_match"] >= 50


def test_qa_study_through_the_cli_exports_and_retrains_a_question_answering_model(qa_files, tiny_tagger: Path,
                                                                                  hpsearch, tmp_path: Path) -> None:
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(qa_space(tiny_tagger, qa_files)))
    hpsearch("run", "--space", "qa.yaml", "--trials", "2", "--keep-best", "1", "--quiet", check=True)
    import optuna

    study = optuna.load_study(study_name="qa", storage=f"sqlite:///{tmp_path}/studies.db")
    assert study.direction.name == "MAXIMIZE"
    for t in study.trials:
        assert t.state.name == "COMPLETE" and t.value == pytest.approx(t.user_attrs["val_f1"], abs=1e-4)
        assert 0 <= t.user_attrs["val_exact_match"] <= 100 and t.user_attrs["validation_rows"] == 32
    hpsearch("export", "--study", "qa", "--output", "best.yaml", "--model", "kept", check=True)
    hpsearch("train", "--config", "best.yaml", "--output-dir", "reader", "--quiet", check=True)
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    for folder in ("kept", "reader"):
        model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / folder)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / folder)
        out = model(**tokenizer("where is it", "alice went to rome", return_tensors="pt"))
        assert out.start_logits.shape == out.end_logits.shape
    metrics = json.loads((tmp_path / "reader" / "metrics.json").read_text())
    assert {"exact_match", "f1", "eval_loss"} <= set(metrics["metrics"])


MINILM = REPO / "models" / "all-MiniLM-L6-v2"


@pytest.mark.skipif(not (MINILM / "config.json").is_file(), reason="make models writes the MiniLM weights")
def test_the_shipped_question_answering_space_runs_on_minilm(hpsearch, tmp_path: Path) -> None:
    """search_spaces/question_answering.yaml as shipped (MiniLM, data/qa-demo), cut to a quick trial."""
    space = REPO / "search_spaces" / "question_answering.yaml"
    hpsearch("run", "--space", str(space), "--trials", "1", "--device", "cpu", "--quiet",
             "--set", f"model.name_or_path={MINILM}", "--set", f"data.train.path={REPO}/data/qa-demo/train.jsonl",
             "--set", f"data.validation.path={REPO}/data/qa-demo/dev.jsonl", "--set", "data.max_train_samples=48",
             "--set", "data.max_eval_samples=16", "--set", "params.epochs=null", "--set", "fixed.epochs=1",
             "--set", "params.learning_rate=null", "--set", "fixed.learning_rate=3.0e-4", check=True)
    import optuna

    trial = optuna.load_study(study_name="qa-demo", storage=f"sqlite:///{tmp_path}/studies.db").trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["validation_rows"] == 16
    assert 0 <= trial.user_attrs["val_exact_match"] <= trial.user_attrs["val_f1"] <= 100

"""Extractive question answering (SQuAD-style): a question, a context, the answer a span of the context.

An encoder with a span head (``AutoModelForQuestionAnswering``) scores every context token as the answer's start and
as its end. A context longer than ``model.max_length`` allows is cut into overlapping windows (``doc_stride``
tokens shared by neighbours); a window is labelled with the answer's token positions, or with the CLS token when
the answer is not inside it. At evaluation each window pairs its ``n_best`` top start and end tokens into spans
(start + end score, inside the context, at most ``max_answer_length`` tokens); the best over an example's windows
is its answer, read from the context by character offsets; with ``allow_no_answer`` (SQuAD v2) the answer is empty
when the CLS score beats it.
Metrics: ``exact_match`` and ``f1`` as the official SQuAD evaluation computes them (0-100, each prediction against
its best gold answer, after SQuAD's normalization; :func:`squad_scores`), and ``eval_loss``.

Answers come as SQuAD's ``answers`` column (``{"text": [...], "answer_start": [...]}``, a list of such dicts also
reads) or as two flat columns (``answer_text_column``, ``answer_start_column``; an empty text is no answer). The
first gold answer is the one trained on; every one counts when scoring.
"""
from __future__ import annotations

import collections
import re
import string
from typing import TYPE_CHECKING, Any

from ..errors import DataError, HpsearchError
from .base import Column, Metric

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, RawSplit, Rows

PUNCTUATION = frozenset(string.punctuation)
"""What SQuAD's normalization removes (ASCII punctuation only, as the official script)."""
MASKED = -1.0e4
"""The start and end score of padding positions: never an answer, and no weight in the loss's softmax."""


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be an integer >= 1"
    return None


def _stride(value: Any) -> str | None:
    return None if value == "auto" else (_positive_int(value) and "must be auto or an integer >= 1")


class QuestionAnswering:
    """``data.task: question_answering``."""

    name = "question_answering"
    metrics = (
        Metric("f1", True, "SQuAD token F1 of the predicted answer against the best gold answer, mean, 0-100"),
        Metric("exact_match", True, "share of answers equal to a gold answer after SQuAD's normalization, 0-100"),
        Metric("eval_loss", False, "mean cross-entropy of the start and end positions over the windows"),
    )
    default_metric = "f1"
    columns = (
        Column("question_column", "question", help="the question"),
        Column("context_column", "context", help="the text the answer is a span of"),
        Column("answers_column", None, required=False,
               help="SQuAD's answers: {text: [...], answer_start: [...]} (empty lists: no answer)"),
        Column("answer_text_column", None, required=False, help="flat files: the answer's text (empty: no answer)"),
        Column("answer_start_column", None, required=False,
               help="flat files: the character where the answer starts in the context"),
    )
    options: dict[str, Any] = {"doc_stride": "auto", "max_answer_length": 30, "n_best": 20,
                               "allow_no_answer": False}
    option_choices = {"allow_no_answer": (True, False)}
    option_checks = {"doc_stride": _stride, "max_answer_length": _positive_int, "n_best": _positive_int}
    """``doc_stride``: tokens shared by neighbouring windows of a long context (auto: a third of
    ``model.max_length``, at most 128); ``max_answer_length``: the longest answer in tokens; ``n_best``: the top
    start and end tokens a window pairs into spans (transformers' ``n_best_size``); ``allow_no_answer``: questions
    may have no answer in the context (SQuAD v2)."""
    auto_class = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    host_reads = ""
    """What the training forward reads from the device (nothing: a CUDA graph captures it)."""

    def column_problems(self, columns: dict[str, str | None]) -> list[tuple[str, str]]:
        """The answers either in one SQuAD-style column or in two flat ones, not both."""
        flat = (columns.get("answer_text_column"), columns.get("answer_start_column"))
        if columns.get("answers_column") and any(flat):
            key = "answer_text_column" if flat[0] else "answer_start_column"
            return [(key, "is for flat files; with answers_column (SQuAD's {text, answer_start}), drop it")]
        if any(flat) and not all(flat):
            key = "answer_start_column" if flat[0] else "answer_text_column"
            return [(key, "is required with the other flat answer column")]
        if not columns.get("answers_column") and not any(flat):
            return [("answers_column", "is required (SQuAD's {text, answer_start}), or give answer_text_column "
                                       "and answer_start_column")]
        return []

    def encode(self, train: RawSplit, validation: RawSplit, tokenizer: Any, max_length: int,
               options: dict[str, Any]) -> tuple[Encoded, Encoded, list[str]]:
        if not getattr(tokenizer, "is_fast", False):
            raise HpsearchError("question_answering needs a fast tokenizer (character offsets for each token); "
                                f"{type(tokenizer).__name__} is not one")
        return (_encode(train, tokenizer, max_length, options), _encode(validation, tokenizer, max_length, options),
                [])

    def head_config(self, label_names: list[str]) -> dict[str, Any]:
        return {}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Start and end scores stacked, [B, L, 2], padding positions masked."""
        import torch

        out = model(**batch)
        logits = torch.stack([out.start_logits, out.end_logits], -1)
        return logits.masked_fill(~batch["attention_mask"][..., None], MASKED)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean of the start and end positions' cross-entropies (as transformers' span heads compute it)."""
        import torch

        logits = logits.float()
        return (torch.nn.functional.cross_entropy(logits[..., 0], labels[:, 0])
                + torch.nn.functional.cross_entropy(logits[..., 1], labels[:, 1])) / 2

    def evaluate_batch(self, logits: torch.Tensor, labels: torch.Tensor, rows: Rows) -> Any:
        """Per window: its example, its best answer span's score and text, and its no-answer (CLS) score; the gold
        answers of the batch's examples; the batch's summed loss and its window count."""
        import torch

        logits = logits.float()
        loss = float(torch.nn.functional.cross_entropy(logits[..., 0], labels[:, 0], reduction="sum")
                     + torch.nn.functional.cross_entropy(logits[..., 1], labels[:, 1], reduction="sum")) / 2
        logits = logits.cpu()
        offsets = rows.extra("offsets")[:, : logits.shape[1]]
        cls = rows.extra("cls_index")
        null = (logits[torch.arange(len(cls)), cls].sum(-1)).tolist()
        scores, starts, ends = best_spans(logits, offsets[..., 0] >= 0, rows.options["n_best"],
                                          rows.options["max_answer_length"])
        windows, gold = [], {}
        for i, (example, raw) in enumerate(rows.examples()):
            gold[example] = raw["answers"]
            score = float(scores[i])
            text = raw["context"][int(offsets[i, starts[i], 0]):int(offsets[i, ends[i], 1])] \
                if score > -float("inf") else ""
            windows.append((example, score, text, null[i]))
        return windows, gold, loss, len(labels)

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]:
        predicted, gold = _answers(batches, options)
        return {**squad_scores([predicted[e] for e in gold], [gold[e] for e in gold]),
                "eval_loss": sum(b[2] for b in batches) / max(1, sum(b[3] for b in batches))}

    prediction_extras = ()
    """What :meth:`predictions` gives a metric function besides predictions and references."""

    def predictions(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, Any]:
        """Each question's predicted answer text ("" for no answer) and its gold answers (a list of texts)."""
        predicted, gold = _answers(batches, options)
        return {"predictions": [predicted[e] for e in gold], "references": [gold[e] for e in gold]}


def best_spans(logits: torch.Tensor, inside: torch.Tensor, n_best: int,
               longest: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each window's best answer span among its ``n_best`` top starts and ``n_best`` top ends inside the context
    (``inside``, [B, L]), the end not before the start and at most ``longest`` tokens on: (score, start, end), each
    [B]; the score is start + end logit, -inf where a window has no such span."""
    import torch

    k = min(n_best, logits.shape[1])
    start = logits[..., 0].masked_fill(~inside, -float("inf"))
    end = logits[..., 1].masked_fill(~inside, -float("inf"))
    s_val, s_idx = start.topk(k, -1)
    e_val, e_idx = end.topk(k, -1)
    pair = s_val[:, :, None] + e_val[:, None, :]
    s, e = s_idx[:, :, None], e_idx[:, None, :]
    pair = pair.masked_fill((e < s) | (e >= s + longest), -float("inf"))
    score, flat = pair.flatten(1).max(-1)
    rows = torch.arange(len(flat))
    return score, s_idx[rows, flat // k], e_idx[rows, flat % k]


def _answers(batches: list[Any], options: dict[str, Any]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Each example's predicted text, the best span over its windows ("" when it has none, or with
    ``allow_no_answer`` when its lowest no-answer score beats that span), and its gold texts; by example index."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    gold: dict[int, list[str]] = {}
    for windows, answers, _, _ in batches:
        gold.update(answers)
        for example, score, text, null_score in windows:
            null[example] = min(null.get(example, null_score), null_score)
            if example not in best or score > best[example][0]:
                best[example] = (score, text)
    out = {}
    for example in sorted(gold):
        score, text = best[example]
        out[example] = "" if options["allow_no_answer"] and null[example] > score else text
    return out, dict(sorted(gold.items()))


# ---------------------------------------------------------------------------------------------------------------
# SQuAD's evaluation (the official v2.0 script's rules, which are v1.1's on answerable questions).


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed (SQuAD's normalization)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalized tokens; when either side is empty (no answer), 1 if both are, else 0."""
    pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not true:
        return float(pred == true)
    same = sum((collections.Counter(pred) & collections.Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 (0-100), each prediction scored against its best gold answer; a question without
    gold answers is answered right by "" alone (SQuAD v2)."""
    if not predictions:
        raise HpsearchError("question_answering: no questions to score")
    em = f1 = 0.0
    for prediction, golds in zip(predictions, references):
        golds = [g for g in golds if normalize_answer(g)] or [""]
        em += max(exact_match(prediction, g) for g in golds)
        f1 += max(token_f1(prediction, g) for g in golds)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}


# ---------------------------------------------------------------------------------------------------------------
# Encoding.


def _gold(split: RawSplit, contexts: list[str], allow_no_answer: bool) -> list[list[tuple[str, int]]]:
    """Every row's gold answers as (text, start character), each checked against its context."""
    from .encoded import column_values

    flat = split.columns.get("answers_column") is None
    if flat:
        key = "answer_text_column"
        texts, starts = column_values(split, "answer_text_column"), column_values(split, "answer_start_column")
        values = list(zip(texts, starts))
    else:
        key = "answers_column"
        values = column_values(split, "answers_column")
    out = []
    for row, (value, context) in enumerate(zip(values, contexts), 1):
        where = f"{split.where}: row {row}"
        answers = _flat_answer(where, split, value) if flat else _squad_answers(where, split, value)
        for n, (text, start) in enumerate(answers, 1):
            which = "" if len(answers) == 1 else f" (answer {n})"
            found = context[start:start + len(text)]
            if found != text:
                raise DataError(f"{where}: {_column(split, 'answer_start_column' if flat else key)}{which}: the "
                                f"context at character {start} reads {found!r}, not the answer {text!r}")
        if not answers and not allow_no_answer:
            raise DataError(f"{where}: {_column(split, key)}: no answer; for questions without one (SQuAD v2) set "
                            f"data.allow_no_answer: true, or drop the row")
        out.append(answers)
    return out


def _column(split: RawSplit, key: str) -> str:
    return f"{key} '{split.columns.get(key)}'"


def _start(where: str, column: str, value: Any, text: str) -> int:
    """A character position: an integer >= 0, also as the float a loader made of it (a column with one
    fractional value is read as floats: its 0 is 0.0, and only the fractional one is wrong)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: {column}: answer_start {value!r} of {text!r} is not a character position "
                        f"(an integer >= 0)")
    return value


def _squad_answers(where: str, split: RawSplit, value: Any) -> list[tuple[str, int]]:
    """SQuAD's ``{"text": [...], "answer_start": [...]}`` (or a list of ``{"text", "answer_start"}``)."""
    column = _column(split, "answers_column")
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        value = {"text": [v.get("text") for v in value], "answer_start": [v.get("answer_start") for v in value]}
    if not isinstance(value, dict) or not isinstance(value.get("text"), list) \
            or not isinstance(value.get("answer_start"), list) or len(value["text"]) != len(value["answer_start"]):
        raise DataError(f"{where}: {column} must hold {{text: [...], answer_start: [...]}} of equal lengths, got "
                        f"{str(value)[:80]}")
    out = []
    for text, start in zip(value["text"], value["answer_start"]):
        if not isinstance(text, str) or not text:
            raise DataError(f"{where}: {column}: an answer text is {text!r}; a question without an answer has "
                            f"empty lists")
        out.append((text, _start(where, column, start, text)))
    return out


def _flat_answer(where: str, split: RawSplit, value: tuple[Any, Any]) -> list[tuple[str, int]]:
    """``answer_text_column`` and ``answer_start_column``: one answer, or none when the text is empty."""
    text, start = value
    if not isinstance(text, str):
        what = "null (a missing value is not an empty text; \"\" means no answer)" if text is None else repr(text)
        raise DataError(f"{where}: {_column(split, 'answer_text_column')} is {what}")
    if text == "":
        return []
    return [(text, _start(where, _column(split, "answer_start_column"), start, text))]


def stride_for(options: dict[str, Any], max_length: int) -> int:
    """``doc_stride``, with ``auto`` resolved to a third of ``max_length``, at most 128 (128 at transformers'
    usual 384)."""
    stride = options["doc_stride"]
    return min(128, max_length // 3) if stride == "auto" else int(stride)


def _check_room(split: RawSplit, tokenizer: Any, questions: list[str], max_length: int, stride: int) -> None:
    """Every question leaves a window room for more context than the stride (else no window could advance)."""
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    for row, n in enumerate(lengths, 1):
        if max_length - special - n <= stride:
            raise DataError(f"{split.where}: row {row}: {_column(split, 'question_column')} is {n} tokens: with "
                            f"model.max_length {max_length} and data.doc_stride {stride} a window has no room for "
                            f"the context; raise max_length, lower doc_stride or shorten the question")


def _encode(split: RawSplit, tokenizer: Any, max_length: int, options: dict[str, Any]) -> Encoded:
    """Question and context tokenized into windows; labels at the first gold answer's tokens (CLS when it is
    outside the window); per window its character offsets (-1 outside the context) and CLS position."""
    import torch

    from .encoded import Encoded, pad_id, padded, text_values

    questions = [q.lstrip() for q in text_values(split, "question_column")]
    contexts = text_values(split, "context_column")
    gold = _gold(split, contexts, bool(options["allow_no_answer"]))
    stride = stride_for(options, max_length)
    _check_room(split, tokenizer, questions, max_length, stride)
    question_first = tokenizer.padding_side == "right"
    pair = (questions, contexts) if question_first else (contexts, questions)
    enc = tokenizer(*pair, truncation="only_second" if question_first else "only_first", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    rows = enc["input_ids"]
    n = len(rows)
    ids, lengths = padded(rows, pad_id(tokenizer))
    types = padded(enc["token_type_ids"], 0)[0] if "token_type_ids" in enc else None
    offsets = torch.full((n, ids.shape[1], 2), -1, dtype=torch.int32)
    labels = torch.zeros((n, 2), dtype=torch.int64)
    cls_index = torch.zeros(n, dtype=torch.int64)
    example = torch.tensor(enc["overflow_to_sample_mapping"], dtype=torch.int64)
    context_id = 1 if question_first else 0
    for i, row in enumerate(rows):
        spans = enc["offset_mapping"][i]
        inside = [t for t, s in enumerate(enc.sequence_ids(i)) if s == context_id]
        if inside:
            offsets[i, inside] = torch.tensor([spans[t] for t in inside], dtype=torch.int32)
        cls_index[i] = row.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in row else 0
        labels[i, 0], labels[i, 1] = _positions(gold[int(example[i])], spans, inside, int(cls_index[i]))
    examples = [{"context": c, "answers": [t for t, _ in g]} for c, g in zip(contexts, gold)]
    return Encoded(ids, lengths, labels, types, None, True, {"offsets": offsets, "cls_index": cls_index}, example,
                   examples)


def _positions(answers: list[tuple[str, int]], spans: list[tuple[int, int]], inside: list[int],
               cls: int) -> tuple[int, int]:
    """The first answer's start and end token in this window (``spans``: each token's characters; ``inside``: the
    context's tokens), or (cls, cls) when it is not wholly inside."""
    if not answers or not inside:
        return cls, cls
    text, first = answers[0]
    last = first + len(text)
    if spans[inside[0]][0] > first or spans[inside[-1]][1] < last:
        return cls, cls
    start = next(t for t in inside if spans[t][1] > first)
    end = max(t for t in inside if spans[t][0] < last)
    return start, end


TASK = QuestionAnswering()

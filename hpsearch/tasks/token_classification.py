"""Token classification (named-entity recognition and other tagging): a list of words per row, a tag per word.

Words are split into sub-word tokens; the first token of each word carries the word's tag and the others are
ignored by loss and metrics (``label_all_tokens: true`` tags them too, ``B-`` becoming ``I-``). Tags may be strings
or integers that the dataset's features name. Metrics are entity-level precision, recall and F1 computed by
``seqeval`` (its default conlleval-compatible matching, or strict matching under ``tag_scheme`` IOB2, IOBES or
IOB1), plus token accuracy and the loss.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..errors import DataError, HpsearchError
from .base import IGNORE, Column, Metric

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, RawSplit, Rows

SCHEMES = ("auto", "IOB2", "IOBES", "IOB1")
"""``auto``: seqeval's default (conlleval) matching; the others: its strict mode with that scheme."""


class TokenClassification:
    """``data.task: token_classification``."""

    name = "token_classification"
    metrics = (
        Metric("entity_f1", True, "entity-level micro F1 (seqeval)"),
        Metric("entity_precision", True, "entity-level micro precision (seqeval)"),
        Metric("entity_recall", True, "entity-level micro recall (seqeval)"),
        Metric("token_accuracy", True, "share of labelled tokens tagged right"),
        Metric("eval_loss", False, "mean cross-entropy over labelled tokens"),
    )
    default_metric = "entity_f1"
    columns = (
        Column("tokens_column", "tokens", help="the list of words of a row"),
        Column("tags_column", "ner_tags", help="the list of tags, one per word (strings, or integers the "
                                               "dataset names)"),
    )
    options: dict[str, Any] = {"label_all_tokens": False, "tag_scheme": "auto"}
    option_choices = {"label_all_tokens": (True, False), "tag_scheme": SCHEMES}
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    host_reads = ""
    """What the training forward reads from the device (nothing: a CUDA graph captures it)."""

    def column_problems(self, columns: dict[str, str | None]) -> list[tuple[str, str]]:
        return []

    def encode(self, train: RawSplit, validation: RawSplit, tokenizer: Any, max_length: int,
               options: dict[str, Any]) -> tuple[Encoded, Encoded, list[str]]:
        if not getattr(tokenizer, "is_fast", False):
            raise HpsearchError("token_classification needs a fast tokenizer (word ids for each sub-word token); "
                                f"{type(tokenizer).__name__} is not one")
        tags = [_tag_strings(s) for s in (train, validation)]
        names = _tag_names(tags[0], tags[1])
        index = {n: i for i, n in enumerate(names)}
        inside = {i: index.get("I-" + n[2:], i) for n, i in index.items() if n.startswith("B-")}
        out = [_encode_split(split, split_tags, index, inside, tokenizer, max_length,
                             options["label_all_tokens"])
               for split, split_tags in zip((train, validation), tags)]
        return out[0], out[1], names

    def head_config(self, label_names: list[str]) -> dict[str, Any]:
        return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                "label2id": {n: i for i, n in enumerate(label_names)}}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return model(**batch).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def loss_units(self, labels: torch.Tensor) -> torch.Tensor:
        """The labelled tokens the mean loss averages over."""
        return (labels != IGNORE).sum()

    def evaluate_batch(self, logits: torch.Tensor, labels: torch.Tensor, rows: Rows) -> Any:
        """Per row: the labelled positions' gold and predicted ids; plus the batch's summed loss and count."""
        import torch

        logits = logits.float()
        keep = labels != IGNORE
        loss = (torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
                if keep.any() else 0.0)
        preds = logits.argmax(-1).cpu()
        labels, keep = labels.cpu(), keep.cpu()
        rows = [(labels[i][keep[i]].tolist(), preds[i][keep[i]].tolist()) for i in range(labels.shape[0])]
        return rows, loss, int(keep.sum())

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]:
        rows = [row for b in batches for row in b[0]]
        gold = [[label_names[i] for i in g] for g, _ in rows]
        pred = [[label_names[i] for i in p] for _, p in rows]
        tokens = sum(len(g) for g in gold)
        correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
        loss = sum(b[1] for b in batches) / max(1, sum(b[2] for b in batches))
        return {**entity_scores(gold, pred, options.get("tag_scheme", "auto")),
                "token_accuracy": correct / tokens if tokens else 0.0,
                "eval_loss": loss}

    prediction_extras = ("label_names",)
    """What :meth:`predictions` gives a metric function besides predictions and references."""

    def predictions(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, Any]:
        """Predicted and true tags, a list of tag strings per sentence (what seqeval takes)."""
        pred, gold = _tag_lists(batches, label_names)
        return {"predictions": pred, "references": gold, "label_names": label_names}


def _tag_lists(batches: list[Any], label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    rows = [row for b in batches for row in b[0]]
    return [[label_names[i] for i in p] for _, p in rows], [[label_names[i] for i in g] for g, _ in rows]


def entity_scores(gold: list[list[str]], pred: list[list[str]], scheme: str = "auto") -> dict[str, float]:
    """Entity-level micro precision, recall and F1 as seqeval computes them."""
    from seqeval import metrics
    from seqeval import scheme as schemes

    kwargs: dict[str, Any] = {"zero_division": 0}
    if scheme != "auto":
        kwargs.update(mode="strict", scheme=getattr(schemes, scheme))
    return {"entity_f1": float(metrics.f1_score(gold, pred, **kwargs)),
            "entity_precision": float(metrics.precision_score(gold, pred, **kwargs)),
            "entity_recall": float(metrics.recall_score(gold, pred, **kwargs))}


def _tag_strings(split: RawSplit) -> list[list[str]]:
    """Every row's tags as strings: integer tags are named by the dataset's features (``ClassLabel``)."""
    from .encoded import column_values

    col = split.columns["tags_column"]
    values = column_values(split, "tags_column")
    words = column_values(split, "tokens_column")
    names = _feature_names(split.rows, col)
    out = []
    for r, (row, ws) in enumerate(zip(values, words)):
        if not isinstance(row, (list, tuple)) or not isinstance(ws, (list, tuple)):
            raise DataError(f"{split.where}: row {r + 1}: '{col}' and '{split.columns['tokens_column']}' must be "
                                f"lists (one tag per word)")
        if len(row) != len(ws):
            raise DataError(f"{split.where}: row {r + 1} has {len(ws)} words but {len(row)} tags")
        if any(isinstance(t, bool) or not isinstance(t, (int, str)) for t in row):
            raise DataError(f"{split.where}: row {r + 1}: tags must be strings or integers, got {row[:5]}")
        if any(isinstance(t, int) for t in row):
            if names is None:
                raise DataError(f"{split.where}: the tags in '{col}' are integers and the dataset does not name "
                                    f"them (no ClassLabel feature); give the tags as strings such as B-PER")
            if any(isinstance(t, int) and not 0 <= t < len(names) for t in row):
                raise DataError(f"{split.where}: row {r + 1}: a tag id is outside 0..{len(names) - 1} ({names})")
            row = [names[t] if isinstance(t, int) else t for t in row]
        out.append(list(row))
    return out


def _feature_names(rows: Any, column: str) -> list[str] | None:
    """The tag names a ``datasets`` feature gives a column of integer tags (Sequence/List of ClassLabel)."""
    feature = getattr(rows, "features", {}).get(column) if hasattr(rows, "features") else None
    inner = getattr(feature, "feature", None)
    return list(inner.names) if getattr(inner, "names", None) else None


def _tag_names(train: list[list[str]], validation: list[list[str]]) -> list[str]:
    """Distinct training tags, ``O`` first, then by entity type and prefix; validation tags must be among them."""
    seen = {t for row in train for t in row}
    if not seen:
        raise HpsearchError("data.train: no tags")
    names = sorted(seen, key=lambda t: (t != "O", t[2:] if t[1:2] == "-" else t, t))
    unknown = sorted({t for row in validation for t in row} - seen)
    if unknown:
        raise HpsearchError(f"data.validation: tags not seen in train: {', '.join(unknown[:10])}")
    return names


def _encode_split(split: RawSplit, tags: list[list[str]], index: dict[str, int], inside: dict[int, int],
                  tokenizer: Any, max_length: int, label_all: bool) -> Encoded:
    """Tokenize words (``is_split_into_words``) and align the tags to sub-word tokens."""
    import torch

    from .encoded import Encoded, column_values, pad_id, padded

    words = [[str(w) for w in ws] for ws in column_values(split, "tokens_column")]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=False)
    n = len(words)
    ids, lengths = padded(enc["input_ids"], pad_id(tokenizer))
    labels = torch.full(ids.shape, IGNORE, dtype=torch.int64)
    cut_rows = cut_words = 0
    for r in range(n):
        previous = None
        word_ids = enc.word_ids(r)
        for pos, w in enumerate(word_ids):
            if w is None:
                continue
            tag = index[tags[r][w]]
            if w != previous:
                labels[r, pos] = tag
            elif label_all:
                labels[r, pos] = inside.get(tag, tag)
            previous = w
        seen = {w for w in word_ids if w is not None}
        if len(seen) < len(words[r]):
            cut_rows += 1
            cut_words += len(words[r]) - len(seen)
    if cut_rows:
        print(f"note: {split.where}: {cut_rows} of {n} rows longer than max_length {max_length} were truncated "
              f"({cut_words} words not seen by the model or the metrics)", file=sys.stderr)
    return Encoded(ids, lengths, labels)


TASK = TokenClassification()

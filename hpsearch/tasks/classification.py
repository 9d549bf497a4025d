"""Sequence classification: one text (or a text pair) per row, one label out of a set; cross-entropy.

Labels may be strings or integers; their names are the distinct training values, sorted, and become the
head's ``id2label``. Metrics: accuracy (default), macro F1 over the classes present, and the loss.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .base import Column, Metric

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, RawSplit, Rows

TEXT_COLUMNS = (
    Column("text_column", "text", help="the input text"),
    Column("text_pair_column", None, required=False, help="a second text, for pair tasks (NLI, paraphrase)"),
    Column("label_column", "label", help="the target"),
)
"""The columns of the text tasks (classification and regression)."""


def encode_text(split: RawSplit, tokenizer: Any, max_length: int, labels: torch.Tensor) -> Encoded:
    """One split's text (and pair) tokenized, with ``labels``: what classification and regression share."""
    from .encoded import Encoded, text_values, tokenize

    texts = text_values(split, "text_column")
    pairs = None if split.columns.get("text_pair_column") is None else text_values(split, "text_pair_column")
    ids, lengths, types = tokenize(tokenizer, texts, pairs, max_length)
    return Encoded(ids, lengths, labels, types)


def label_names(train_raw: list, eval_raw: list, where: tuple[str, str]) -> list:
    """The distinct training labels, sorted (numbers before strings); every validation label among them. ``where``
    names the train and validation splits in errors."""
    for split, values in zip(where, (train_raw, eval_raw)):
        row = next((i for i, v in enumerate(values, 1) if v is None or v == ""), None)
        if row is not None:
            raise DataError(f"{split}: row {row}: the label is {'null' if values[row - 1] is None else 'empty'}: "
                            f"fill it or drop the row")
    names = sorted(set(train_raw), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise DataError(f"{where[0]}: classification needs at least 2 distinct labels in train, found {names}")
    known = set(names)
    unknown = [(i, v) for i, v in enumerate(eval_raw, 1) if v not in known]
    if unknown:
        raise DataError(f"{where[1]}: row {unknown[0][0]}: label {unknown[0][1]!r} never occurs in train "
                        f"({len(unknown)} such rows; train's labels: {', '.join(map(str, names[:10]))})")
    return names


class SequenceClassification:
    """``data.task: classification``."""

    name = "classification"
    metrics = (
        Metric("accuracy", True, "share of rows whose most likely class is the label", proportion=True),
        Metric("f1", True, "macro F1 over the classes present in labels or predictions"),
        Metric("f1_weighted", True, "F1 per class weighted by its rows (imbalanced data)"),
        Metric("f1_micro", True, "F1 over all decisions (equals accuracy for single-label data)", proportion=True),
        Metric("mcc", True, "Matthews correlation coefficient"),
        Metric("roc_auc", True, "area under the ROC curve: binary, or one-vs-rest macro over the classes",
               undefined="the validation labels hold a single class, or lack one of the classes"),
        Metric("eval_loss", False, "mean cross-entropy"),
    )
    default_metric = "accuracy"
    columns = TEXT_COLUMNS
    options: dict[str, Any] = {}
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    host_reads = ""
    """What the training forward reads from the device (nothing: a CUDA graph captures it)."""

    def column_problems(self, columns: dict[str, str | None]) -> list[tuple[str, str]]:
        return []

    def encode(self, train: RawSplit, validation: RawSplit, tokenizer: Any, max_length: int,
               options: dict[str, Any]) -> tuple[Encoded, Encoded, list[str]]:
        import torch

        from .encoded import column_values

        raw = [column_values(s, "label_column") for s in (train, validation)]
        names = label_names(raw[0], raw[1], (train.where, validation.where))
        index = {v: i for i, v in enumerate(names)}
        enc = [encode_text(s, tokenizer, max_length, torch.tensor([index[v] for v in values]))
               for s, values in zip((train, validation), raw)]
        return enc[0], enc[1], [str(v) for v in names]

    def head_config(self, label_names: list[str]) -> dict[str, Any]:
        return {"num_labels": len(label_names), "problem_type": "single_label_classification",
                "id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return model(**batch).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.cross_entropy(logits.float(), labels)

    def evaluate_batch(self, logits: torch.Tensor, labels: torch.Tensor, rows: Rows) -> Any:
        return logits.float().cpu(), labels.cpu()

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]:
        import torch

        logits = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        return classification_metrics(logits, labels, label_names)

    prediction_extras = ("scores", "label_names")
    """What :meth:`predictions` gives a metric function besides predictions and references."""

    def predictions(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, Any]:
        """Class indices predicted and true (numpy), the class probabilities (``scores``) and ``label_names``."""
        import torch

        logits = torch.cat([b[0] for b in batches]).float()
        return {"predictions": logits.argmax(-1).numpy(), "references": torch.cat([b[1] for b in batches]).numpy(),
                "scores": torch.softmax(logits, -1).numpy(), "label_names": label_names}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           label_names: list[str] | None = None) -> dict[str, float]:
    """Accuracy, F1 (macro over the classes present in labels or predictions, weighted, micro), MCC, ROC AUC
    (binary, else one-vs-rest macro; NaN when the labels hold one class) and cross-entropy (scikit-learn's
    metrics); with ``label_names``, each class's F1 as ``f1_class_<name>`` too."""
    import numpy as np
    import torch
    from sklearn import metrics as sk

    logits = logits.float()
    preds, gold = logits.argmax(-1).numpy(), labels.numpy()
    probs = torch.softmax(logits, -1).numpy()
    present = np.unique(np.concatenate([gold, preds]))
    out = {
        "accuracy": int((preds == gold).sum()) / len(gold),  # exact k / n, not a float32 mean
        "f1": float(sk.f1_score(gold, preds, average="macro", labels=present, zero_division=0)),
        "f1_weighted": float(sk.f1_score(gold, preds, average="weighted", zero_division=0)),
        "f1_micro": float(sk.f1_score(gold, preds, average="micro", zero_division=0)),
        "mcc": float(sk.matthews_corrcoef(gold, preds)),
        "roc_auc": _roc_auc(gold, probs),
        "eval_loss": torch.nn.functional.cross_entropy(logits, labels).item(),
    }
    if label_names:
        per_class = sk.f1_score(gold, preds, average=None, labels=range(len(label_names)), zero_division=0)
        out.update({f"f1_class_{name}": float(v) for name, v in zip(label_names, per_class)})
    return out


def _roc_auc(gold: Any, probs: Any) -> float:
    from sklearn import metrics as sk

    if len(set(gold.tolist())) < 2:
        return float("nan")  # undefined with one class in the labels
    if probs.shape[1] == 2:
        return float(sk.roc_auc_score(gold, probs[:, 1]))
    try:
        return float(sk.roc_auc_score(gold, probs, multi_class="ovr", average="macro", labels=range(probs.shape[1])))
    except ValueError:  # a class absent from the validation labels
        return float("nan")


TASK = SequenceClassification()

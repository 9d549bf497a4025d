"""Metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from hpsearch.tasks.classification import classification_metrics
from hpsearch.tasks.regression import regression_metrics


def test_classification_metrics() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0]), 3).float() * 5
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(0.6)
    # per-class F1: c0 tp1 fp1 fn1 -> 0.5; c1 tp2 fp1 fn0 -> 0.8; c2 tp0 fp0 fn1 -> 0
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["eval_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())


def test_accuracy_is_the_exact_share_of_rows() -> None:
    """471 right of 500 is 471 / 500, not float32's 0.94199997: studies compare it with other tools' accuracies."""
    labels = torch.zeros(500, dtype=torch.long)
    preds = torch.cat([torch.zeros(471, dtype=torch.long), torch.ones(29, dtype=torch.long)])
    accuracy = classification_metrics(torch.nn.functional.one_hot(preds, 2).float(), labels)["accuracy"]
    assert accuracy == 471 / 500


def test_regression_metrics() -> None:
    labels = torch.tensor([1.0, 2.0, 3.0, 4.0])
    preds = torch.tensor([1.5, 2.0, 2.5, 5.0])
    m = regression_metrics(preds, labels)
    assert m["mse"] == pytest.approx((0.25 + 0 + 0.25 + 1) / 4) and m["mae"] == pytest.approx(0.5)
    assert m["spearman"] == pytest.approx(1.0)
    assert 0.8 < m["pearson"] < 1.0
    assert math.isclose(regression_metrics(-preds, labels)["spearman"], -1.0)


def test_imbalance_metrics_by_hand_and_per_class_f1() -> None:
    """Two classes, 6 rows of class 0 and 2 of class 1; predictions: 5 of 6 zeros right, 1 of 2 ones right."""
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0])
    logits = torch.nn.functional.one_hot(preds, 2).float() * 2
    m = classification_metrics(logits, labels, ["neg", "pos"])
    f1_neg, f1_pos = 2 * 5 / (2 * 5 + 1 + 1), 2 * 1 / (2 * 1 + 1 + 1)  # tp, fp, fn: (5, 1, 1) and (1, 1, 1)
    assert (m["f1_class_neg"], m["f1_class_pos"]) == pytest.approx((f1_neg, f1_pos))
    assert m["f1"] == pytest.approx((f1_neg + f1_pos) / 2)
    assert m["f1_weighted"] == pytest.approx((6 * f1_neg + 2 * f1_pos) / 8)
    assert m["f1_micro"] == pytest.approx(m["accuracy"]) == pytest.approx(6 / 8)
    tp, tn, fp, fn = 1, 5, 1, 1
    assert m["mcc"] == pytest.approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    # ROC AUC from the scores: positives score high on 1 of 2, negatives on 1 of 6; ties count half
    pairs = [(p, n) for p in (6, 7) for n in range(6)]
    score = torch.softmax(logits, -1)[:, 1]
    auc = sum(1.0 if score[p] > score[n] else 0.5 if score[p] == score[n] else 0.0 for p, n in pairs) / len(pairs)
    assert m["roc_auc"] == pytest.approx(auc)
    assert math.isnan(classification_metrics(logits[:6], labels[:6])["roc_auc"])  # one class: undefined

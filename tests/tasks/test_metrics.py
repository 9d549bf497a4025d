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

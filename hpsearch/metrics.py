"""Validation metrics from model outputs: classification (accuracy, macro F1, loss), regression (MSE, MAE, r)."""
from __future__ import annotations

import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-averaged F1 over the classes present in labels or predictions, and cross-entropy."""
    logits = logits.float()
    preds = logits.argmax(-1)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    n = logits.shape[-1]
    f1s = []
    for c in range(n):
        tp = ((preds == c) & (labels == c)).sum().item()
        fp = ((preds == c) & (labels != c)).sum().item()
        fn = ((preds != c) & (labels == c)).sum().item()
        if tp + fp + fn == 0:
            continue  # class absent from both: it does not count towards the macro average
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": (preds == labels).float().mean().item(),
        "f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "eval_loss": loss,
    }


def regression_metrics(preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """MSE (also reported as eval_loss), MAE, Pearson and Spearman correlation."""
    preds = preds.float().reshape(-1)
    labels = labels.float().reshape(-1)
    err = preds - labels
    mse = (err**2).mean().item()
    return {
        "mse": mse,
        "eval_loss": mse,
        "mae": err.abs().mean().item(),
        "pearson": _pearson(preds, labels),
        "spearman": _pearson(_ranks(preds), _ranks(labels)),
    }


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    denom = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denom) if denom > 0 else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), as Spearman's coefficient defines them."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.double().cpu().numpy()))


def compute(task: str, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Every metric for ``task`` from the stacked model outputs over the validation set."""
    if task == "regression":
        return regression_metrics(outputs, labels)
    return classification_metrics(outputs, labels)

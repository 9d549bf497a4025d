"""Regression: one text (or pair) per row, one number out; mean squared error.

Metrics: MSE (default, also reported as eval_loss), MAE, and Pearson and Spearman correlation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .base import Metric
from .classification import TEXT_COLUMNS, encode_text

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, RawSplit, Rows


class Regression:
    """``data.task: regression``."""

    name = "regression"
    metrics = (
        Metric("mse", False, "mean squared error"),
        Metric("mae", False, "mean absolute error"),
        Metric("pearson", True, "Pearson correlation of predictions and labels",
               undefined="the predictions or the labels are constant"),
        Metric("spearman", True, "Spearman rank correlation", undefined="the predictions or the labels are constant"),
        Metric("eval_loss", False, "the training loss on validation (= mse)"),
    )
    default_metric = "mse"
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

        out = []
        for split in (train, validation):
            values = column_values(split, "label_column")
            for row, v in enumerate(values, 1):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DataError(f"{split.where}: row {row}: a regression label must be a number, got {v!r}")
            labels = torch.tensor([float(v) for v in values], dtype=torch.float32)
            out.append(encode_text(split, tokenizer, max_length, labels))
        return out[0], out[1], []

    def head_config(self, label_names: list[str]) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return model(**batch).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.mse_loss(logits.float().squeeze(-1), labels)

    def evaluate_batch(self, logits: torch.Tensor, labels: torch.Tensor, rows: Rows) -> Any:
        return logits.float().reshape(-1).cpu(), labels.cpu()

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]:
        import torch

        return regression_metrics(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))

    prediction_extras = ()
    """What :meth:`predictions` gives a metric function besides predictions and references."""

    def predictions(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, Any]:
        """Predicted and true numbers (numpy)."""
        import torch

        return {"predictions": torch.cat([b[0] for b in batches]).float().reshape(-1).numpy(),
                "references": torch.cat([b[1] for b in batches]).float().reshape(-1).numpy()}


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
    import torch
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.double().cpu().numpy()))


TASK = Regression()

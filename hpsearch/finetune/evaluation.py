"""Evaluation: the task's metrics over a whole split, batched by length, under the trial's autocast, with the metric
functions a study names and, for a generative task, generation."""
from __future__ import annotations

import torch

from ..config.metrics import compute as compute_metric
from ..config.metrics import load as load_metric
from ..config.vocabulary import EVAL_BATCH_TOKENS
from ..interrupts import check as check_interrupt
from ..tasks.base import generates
from ..tasks.encoded import Encoded, PreparedData, Rows
from .batching import eval_batches
from .device import autocast


@torch.inference_mode()
def evaluate(model: torch.nn.Module, enc: Encoded, data: PreparedData, device: torch.device, *,
             dtype: torch.dtype | None = None, generate: bool = False,
             batch_tokens: int = EVAL_BATCH_TOKENS, user_metrics: tuple[str, ...] = ()) -> dict[str, float]:
    """The task's metrics over a whole split (``enc``; ``data`` names the task, labels and options), in batches of
    similar length and at most ``batch_tokens`` padded tokens, under autocast to ``dtype`` (None: none).
    ``generate`` adds the metrics a generative task computes from generated text (ROUGE), at the cost of
    generating."""
    task = data.task
    generate = generate and generates(task)
    was_training = model.training
    model.eval()
    parts, generated = [], []
    with autocast(device, dtype):
        for idx in eval_batches(enc.lengths, batch_tokens):
            check_interrupt()
            batch, labels = enc.batch(idx, device), enc.labels_of(idx, device)
            parts.append(task.evaluate_batch(task.forward(model, batch, labels), labels,
                                             Rows(enc, idx, data.options)))
            if generate:
                generated.append(task.generate_batch(model, batch, labels, data))
    model.train(was_training)
    metrics = task.metrics_from(parts, data.label_names, data.options)
    if user_metrics:
        given = task.predictions(parts, data.label_names, data.options)
        for path in user_metrics:
            metrics[path] = compute_metric(path, load_metric(path), given)
    if generate:
        metrics.update(task.generated_metrics(generated, data))
    return metrics

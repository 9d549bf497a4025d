"""The task registry: a task's name in a space file (``data.task``) to the module that implements it.

Modules are imported on first use, and importing one imports no torch (``hpsearch.tasks.base``), so validation
can ask a task for its columns, options and metrics on a machine with only the CLI installed.
"""
from __future__ import annotations

import importlib

from .base import Column, Metric, Task

TASKS = {
    "classification": "hpsearch.tasks.classification",
    "regression": "hpsearch.tasks.regression",
    "token_classification": "hpsearch.tasks.token_classification",
    "causal_lm": "hpsearch.tasks.causal_lm",
    "seq2seq": "hpsearch.tasks.seq2seq",
    "question_answering": "hpsearch.tasks.question_answering",
}
"""Adding a task: a module with a ``TASK`` object that follows :class:`~hpsearch.tasks.base.Task`, and a line here."""


def get_task(name: str) -> Task:
    """The task called ``name``; a KeyError names the known ones."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


def all_metrics() -> dict[str, Metric]:
    """Every metric of every task by name (a name shared by tasks, like eval_loss, has one direction)."""
    out: dict[str, Metric] = {}
    for name in TASKS:
        for metric in get_task(name).metrics:
            out.setdefault(metric.name, metric)
    return out


__all__ = ["TASKS", "Column", "Metric", "Task", "all_metrics", "get_task"]

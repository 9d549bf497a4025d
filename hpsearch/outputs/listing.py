"""Tables of what a storage holds: its studies, and one study's trials (state, value, params, duration)."""
from __future__ import annotations

from typing import Any

import optuna
from rich.table import Table

from ..study import record
from ..study.progress import fmt_params, fmt_value


def studies_table(storage: Any) -> Table:
    """One row per study: direction, metric, trial counts by state, best value and when it started."""
    table = Table(title="studies", header_style="bold")
    for col in ("study", "direction", "metric", "complete", "pruned", "fail", "running", "best", "started"):
        table.add_column(col, justify="right" if col in ("complete", "pruned", "fail", "running", "best") else "left")
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        counts = record.state_counts(optuna.load_study(study_name=s.study_name, storage=storage))
        best = record.value(s.best_trial) if s.best_trial is not None else None
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-"
        metric = ", ".join(s.user_attrs.get(record.METRICS) or [str(s.user_attrs.get(record.METRIC, "-"))])
        table.add_row(s.study_name, ", ".join(d.name.lower() for d in s.directions), metric,
                      str(counts.get("COMPLETE", 0)), str(counts.get("PRUNED", 0)), str(counts.get("FAIL", 0)),
                      str(counts.get("RUNNING", 0)), fmt_value(best), started)
    return table


def trials_table(study: optuna.Study, limit: int | None = None) -> Table:
    """One row per trial, in order: state, value (each objective's, with several, and whether the trial is on the
    Pareto front), where it stopped, duration and params. A trial continued by a later one from its checkpoint is
    that later trial's row, which says where it resumed (``resumed``: trial number @ step)."""
    metric = record.study_metric(study)
    names = record.objectives(study) if record.is_multi(study) else [metric]
    front = {t.number for t in study.best_trials} if record.is_multi(study) else set()
    table = Table(title=f"trials of {study.study_name}", header_style="bold")
    trials = study.get_trials(deepcopy=False)
    folded = record.continued(trials)
    trials = [t for t in trials if t.number not in folded]
    resumed = any(record.resumed_note(t) for t in trials)
    columns = ["#", "state", *names, *(["pareto"] if front else []), "epochs", *(["resumed"] if resumed else []),
               "duration", "params"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("state", "params", "pareto", "resumed") else "right")
    if limit:
        trials = trials[-limit:]
    for t in trials:
        took = f"{t.duration.total_seconds():.1f}s" if t.duration else "-"
        epochs = t.user_attrs.get(record.EPOCHS_COMPLETED)
        values = ([fmt_value(v) for v in t.values] if t.values and len(names) > 1 else
                  [fmt_value(record.shown_value(t, metric))] if len(names) == 1 else ["-"] * len(names))
        table.add_row(str(t.number), t.state.name, *values, *(["*" if t.number in front else ""] if front else []),
                      "-" if epochs is None else f"{epochs:.2f}", *([record.resumed_note(t)] if resumed else []),
                      took, fmt_params(t.params))
    return table

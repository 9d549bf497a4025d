"""A self-contained HTML report of a study: Optuna's plotly figures, the top trials, and what pruning saved.

One file that opens offline: plotly.js is inlined once, every figure after it reuses it.
"""
from __future__ import annotations

import datetime as _dt
import html
import warnings
from pathlib import Path
from typing import Any

import optuna

from ..config.measurements import MEASUREMENTS
from ..study import record
from ..study.progress import fmt_params, fmt_value
from ..tasks import all_metrics


def pruning_savings(study: optuna.Study) -> dict[str, float]:
    """Compute time pruning saved, estimated per pruned trial from its own pace.

    A pruned trial that trained ``e`` of its planned ``E`` epochs in ``t`` seconds would have taken about
    ``t * E / e`` seconds to finish (its time per epoch, evaluations included, times its planned epochs); the
    saving is that estimate minus ``t``. Trials pruned before any epoch fraction was recorded are skipped, and so
    are those a failure ended (out of memory: recorded PRUNED so that the sampler learns, but not pruning's saving).
    """
    spent = estimated = 0.0
    counted = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        if record.failed(t):
            continue
        done = t.user_attrs.get(record.EPOCHS_COMPLETED) or 0.0
        planned = (t.user_attrs.get(record.HYPERPARAMETERS) or {}).get("epochs")
        if not t.duration or not done or not planned:
            continue
        took = t.duration.total_seconds()
        spent += took
        estimated += took * planned / done
        counted += 1
    complete = sum(t.duration.total_seconds() for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.duration)
    return {"pruned_trials": counted, "pruned_spent_s": spent, "pruned_full_estimate_s": estimated,
            "saved_s": estimated - spent, "complete_s": complete,
            "saved_fraction": (estimated - spent) / (complete + estimated) if complete + estimated else 0.0}


def _figures(study: optuna.Study) -> list[tuple[str, Any, str]]:
    """(title, plotly figure or None, note) for every section; a figure Optuna cannot draw yet gets a note."""
    from optuna import visualization as vis

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = sorted({p for t in complete for p in t.params})
    out: list[tuple[str, Any, str]] = []

    def add(title: str, make: Any, note: str = "") -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            fig.update_layout(title=None, margin={"l": 60, "r": 20, "t": 30, "b": 50}, height=420)
            out.append((title, fig, note))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            out.append((title, None, f"not available yet: {exc}"))

    target: dict[str, Any] = {}
    if record.is_multi(study):  # each figure follows the first objective; the front shows them all
        names = record.objectives(study)
        target = {"target": lambda t: t.values[0], "target_name": names[0]}
        if len(names) <= 3:
            add(f"Pareto front: {', '.join(names)} (feasible trials on the front highlighted)",
                lambda: vis.plot_pareto_front(study, target_names=names),
                "hpsearch export --pareto writes one config per front member.")
    add("Optimization history (with best so far)", lambda: vis.plot_optimization_history(study, **target))
    if not target:
        add("Learning curves: intermediate values per trial (pruned trials stop early)",
            lambda: vis.plot_intermediate_values(study),
            "A trial continued from a checkpoint is one curve: its continuation holds the reports it made.")
    if len(complete) >= 2 and params:
        add("Parameter importances", lambda: vis.plot_param_importances(study, **target),
            "Optuna's default importance evaluator, over completed trials.")
        add("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study, **target))
        for p in params:
            add(f"Slice: {p}", lambda p=p: vis.plot_slice(study, params=[p], **target))
    else:
        out.append(("Parameter importances, parallel coordinates, slices", None,
                    "need at least two completed trials with searched parameters"))
    return out


def _top_table(study: optuna.Study, k: int) -> str:
    """The best trials in the order export chooses them (confirmed ones first, by their score:
    :mod:`hpsearch.study.confirm`)."""
    done = record.ranked_trials(study)
    confirmed = record.confirmations(study)
    metric = record.study_metric(study)
    known = all_metrics().get(metric)
    proportion = bool(known and known.proportion)
    tests = record.test_scores(study)
    best = done[0] if done else None
    se_best = record.standard_error(best, record.value(best), proportion) if best else None
    rows = []
    for t in done[:k]:
        a = t.user_attrs
        score = confirmed[t.number]["score"] if t.number in confirmed else None
        se = record.standard_error(t, record.value(t), proportion)
        close = record.within_noise(record.value(best), se_best, record.value(t), se) if best else None
        test = tests.get(t.number, {}).get(metric)
        shown = ", ".join(fmt_value(v) for v in t.values)
        resumed = record.resumed_note(t)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            f"{t.number} (resumed {resumed})" if resumed else t.number, shown, "-" if se is None else f"{se:.4f}",
            "-" if close is None else ("best" if t is best else "yes" if close else "no"),
            "-" if score is None else fmt_value(score), "-" if test is None else fmt_value(test),
            f"{a.get(record.val('eval_loss'), float('nan')):.4f}",
            f"{t.duration.total_seconds():.1f}s" if t.duration else "-", a.get(record.DEVICE, "-"),
            fmt_params(t.params))) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("trial", html.escape(", ".join(record.objectives(study))),
                                              "standard error", "within noise of the best",
                                              "confirmed (folds)", "test (export --model)", "eval loss",
                                              "duration", "device", "params"))
    note = ("<p class='note'>Standard error: sqrt(p (1 - p) / n) over the n validation rows; within noise: less "
            "than two standard errors of the difference from the best, so the order among those is not to be "
            "trusted. The test score (data.test) is measured once per exported model and never used to choose."
            "</p>" if proportion or tests else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"


def _measured_table(study: optuna.Study, k: int) -> str:
    """What the best trials measured (:mod:`hpsearch.config.measurements`, each with its unit), in the order
    export ranks them; only the measurements some of them recorded."""
    done = record.ranked_trials(study)[:k]
    shown = [m for m in MEASUREMENTS if any(m.name in t.user_attrs for t in done)]
    if not done or not shown:
        return "<p class='note'>no completed trial yet</p>"
    head = "".join(f"<th title='{html.escape(m.help)}'>{html.escape(m.name)} ({m.unit})</th>" for m in shown)
    rows = "".join("<tr><td>" + str(t.number) + "</td>" + "".join(
        f"<td>{html.escape(_measure(t.user_attrs.get(m.name)))}</td>" for m in shown) + "</tr>" for t in done)
    bounded = ", ".join(m.name for m in shown if m.constraint)
    return (f"<table><thead><tr><th>trial</th>{head}</tr></thead><tbody>{rows}</tbody></table><p class='note'>"
            f"Hover a column's name for what it measures. study.constraints can bound {bounded}.</p>")


def _measure(value: Any) -> str:
    """A measurement as the table shows it: counts whole, the rest to four significant digits."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}section{margin:2rem 0}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;
text-align:left}th{background:#f5f5f5}.note{color:#666;font-size:.9rem}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{background:#f7f7f9;border-radius:8px;padding:.7rem 1rem;min-width:150px}.card b{display:block;font-size:1.3rem}"""


def render(study: optuna.Study, top: int = 10) -> str:
    """The report as one HTML document (plotly.js inlined once)."""
    counts = record.state_counts(study)
    metric = record.study_metric(study)
    ranked = record.ranked_trials(study)
    if not ranked:
        best_text = "no completed trial"
    elif record.is_multi(study):
        best_text = f"{len(ranked)} trials on the Pareto front"
    else:
        best_text = f"{fmt_value(record.value(ranked[0]))} (trial {ranked[0].number})"
    saved = pruning_savings(study)
    cards = [("best " + metric, best_text), ("complete", counts.get("COMPLETE", 0)),
             ("pruned", counts.get("PRUNED", 0)), ("failed", counts.get("FAIL", 0)),
             ("compute saved by pruning", f"{saved['saved_s'] / 60:.1f} min ({100 * saved['saved_fraction']:.0f} %)")]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>hpsearch report: "
             f"{html.escape(study.study_name)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(study.study_name)}</h1><p class='sub'>"
             f"{', '.join(d.name.lower() for d in study.directions)} "
             f"{html.escape(', '.join(record.objectives(study)))} &middot; generated "
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
             "<div class='cards'>" + "".join(f"<div class='card'>{html.escape(k)}<b>{html.escape(str(v))}</b></div>"
                                             for k, v in cards) + "</div>"]
    first = True
    for title, fig, note in _figures(study):
        parts.append(f"<section><h2>{html.escape(title)}</h2>")
        if fig is not None:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
            first = False
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        parts.append("</section>")
    parts.append(f"<section><h2>Top {top} trials</h2>{_top_table(study, top)}</section>")
    parts.append(f"<section><h2>What the top trials measured</h2>{_measured_table(study, top)}</section>")
    parts.append(
        "<section><h2>Compute saved by pruning</h2>"
        f"<p>{saved['pruned_trials']} pruned trials ran {saved['pruned_spent_s']:.0f} s. Trained to the end they "
        f"would have taken about {saved['pruned_full_estimate_s']:.0f} s, so pruning saved about "
        f"{saved['saved_s']:.0f} s ({100 * saved['saved_fraction']:.0f} % of what the search would have cost "
        f"without pruning; completed trials took {saved['complete_s']:.0f} s).</p><p class='note'>Estimate: each "
        "pruned trial's own time per epoch (training and evaluations) times its planned epochs, minus the time "
        "it actually ran.</p></section></body></html>")
    return "\n".join(parts)


def write_report(study: optuna.Study, output: str | Path, top: int = 10) -> Path:
    """Write the report to ``output`` and return its path."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(study, top), encoding="utf-8")
    return path

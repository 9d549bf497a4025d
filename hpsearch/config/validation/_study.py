"""The ``study`` section: the objective (a metric and its direction, or several), the sampler and pruner (their
options checked against Optuna's constructors), reports, enqueued configs, checkpoints, early stopping,
confirmation and constraints; defaults from :class:`~hpsearch.config.sections.StudySection`."""
from __future__ import annotations

import difflib
import math
from typing import Any

from ...errors import MISSING
from ...tasks import TASKS, all_metrics, get_task
from .. import conditions
from .. import metrics as metric_functions
from ..measurements import CONSTRAINTS, OBJECTIVES
from ..sections import Confirm, EarlyStopping, Pruner, Sampler, StudySection, default, keys
from ..vocabulary import MULTI_OBJECTIVE_SAMPLERS, PRUNERS, SAMPLERS, TRIAL_VALUES
from ._checker import Checker, as_number, hp_value


def check_study(c: Checker, raw: Any, task: Any, params: dict, default_name: str) -> dict:
    """``study``, normalized: every key at its value or default, in the order the stored config keeps them."""
    study = {k: v for k, v in c.mapping(raw, "study", keys(StudySection), required=False).items() if v is not None}
    name = c.string(study, "name", "study", default=default_name)
    objectives = _check_objectives(c, study, _task_metrics(task))
    metric, direction = _check_goal(c, study, task, objectives)
    sampler = _check_sampler(c, study.get("sampler", {"name": "tpe"}), params)
    pruner = _check_pruner(c, study.get("pruner", {"name": "median"}), "study.pruner")
    if sampler["name"] == "gp" and pruner["name"] not in ("none", MISSING):
        # GPSampler fits completed trials only: a pruned trial leaves its model unchanged, so it proposes the same
        # config again (bench/README.md: 12 identical pruned trials in a row on the search benchmark).
        c.add("study.pruner.name", pruner["name"], "the gp sampler learns nothing from pruned trials and "
              "proposes a pruned config again; use pruner: none with gp (or another sampler)")
    # One evaluation per epoch by default, pruner or not: epoch ends are whole-validation checkpoints, so the
    # pruner decides on the same numbers a trial reports (bench/README.md, "Lever runs").
    reports = c.integer(study, "reports_per_epoch", "study", default=default(StudySection, "reports_per_epoch"),
                        low=1)
    subset = c.integer(study, "intermediate_eval_samples", "study",
                       default=default(StudySection, "intermediate_eval_samples"), low=1)
    enqueue = _check_enqueue(c, study.get("enqueue"), params)
    trial_value = c.string(study, "trial_value", "study", default=default(StudySection, "trial_value"),
                           choices=TRIAL_VALUES)
    early_stopping = _check_early_stopping(c, study.get("early_stopping"))
    confirm = _check_confirm(c, study.get("confirm"))
    deterministic = c.boolean(study, "deterministic", "study", default=default(StudySection, "deterministic"))
    constraints = _check_constraints(c, study.get("constraints"))
    if objectives:
        pruner, confirm = _several_objectives(c, study, sampler["name"], pruner, confirm)
    return {
        "name": name, "direction": direction, "metric": metric, "sampler": sampler, "pruner": pruner,
        "reports_per_epoch": reports, "intermediate_eval_samples": subset, "enqueue": enqueue,
        "trial_value": trial_value, "early_stopping": early_stopping, "confirm": confirm,
        "deterministic": deterministic,
        **({"constraints": constraints} if constraints else {}),
        **({"metrics": [m for m, _ in objectives], "directions": [d for _, d in objectives]} if objectives else {}),
    }


def _task_metrics(task: Any) -> dict:
    """The task's metrics by name (every task's when the task itself was reported: no follow-on errors)."""
    return {m.name: m for m in get_task(task).metrics} if task in TASKS else all_metrics()


def _check_goal(c: Checker, study: dict, task: Any, objectives: list[tuple[str, str]]) -> tuple[Any, Any]:
    """The metric that reports, prunes and keeps checkpoints, and its direction: ``study.metric`` (a task metric or
    a metric function), or with several objectives the first evaluated one of them."""
    metrics = _task_metrics(task)
    given = study.get("metric")
    if objectives:  # the first evaluated one is what the live view, reports and checkpoints follow
        evaluated = [(m, d) for m, d in objectives if m not in OBJECTIVES]
        if not evaluated:
            c.add("study.metrics", [m for m, _ in objectives], "needs at least one evaluated metric (the task's, or "
                                                               "a metric function) besides measurements")
            evaluated = objectives
        metric, direction = next(((m, d) for m, d in evaluated if m == given), evaluated[0])
        if study.get("direction") not in (None, direction):
            c.add("study.direction", study["direction"], f"each of study.metrics has its own direction ({metric}: "
                                                         f"{direction})")
        if study.get("directions") not in (None, [d for _, d in objectives]):
            c.add("study.directions", study["directions"], f"contradicts the metrics' own directions "
                                                           f"({', '.join(d for _, d in objectives)})")
        return metric, direction
    user = metric_functions.is_user_metric(given)
    default_metric = get_task(task).default_metric if task in TASKS else "accuracy"
    metric = given if user else c.string(study, "metric", "study", default=default_metric, choices=list(metrics))
    direction = c.string(study, "direction", "study", default=None, choices=("maximize", "minimize"))
    if user:
        return given, _check_user_metric(c, given, task, direction)
    if metric is MISSING:
        return metric, direction
    natural = metrics[metric].direction
    if direction not in (None, MISSING) and direction != natural:
        c.add("study.direction", direction, f"contradicts metric '{metric}', which improves by {natural[:-1]}ing")
    return metric, natural


def _check_user_metric(c: Checker, path: str, task: Any, direction: Any) -> Any:
    """A ``package.module:function`` metric: importable, callable with (predictions, references), a direction
    given or declared, and a task that has predictions to give it. Returns the direction."""
    if task in TASKS and not hasattr(get_task(task), "predictions"):
        c.add("study.metric", path, f"task {task} has no predictions a metric function could score; use one of "
                                    f"its metrics: {', '.join(m.name for m in get_task(task).metrics)}")
        return direction
    try:
        fn = metric_functions.load(path)
    except ValueError as exc:
        c.add("study.metric", path, str(exc))
        return direction
    gives = getattr(get_task(task), "prediction_extras", ()) if task in TASKS else metric_functions.OPTIONAL
    for name in metric_functions.required_extras(fn):
        if name not in gives:
            c.add("study.metric", path, f"requires {name}, which task {task} does not give (it gives "
                                        f"{', '.join(gives) or 'only predictions and references'}); give {name} "
                                        f"a default")
    declared = metric_functions.declared_direction(fn)
    if direction in (None, MISSING):
        if declared is None:
            c.add("study.direction", MISSING, f"is required with metric {path} (or give the function a direction "
                                              f"attribute): maximize or minimize")
        return declared or MISSING
    if declared is not None and declared != direction:
        c.add("study.direction", direction, f"contradicts {path}, which declares {declared}")
    return direction


def _check_objectives(c: Checker, study: dict, metrics: dict) -> list[tuple[str, str]]:
    """``study.metrics``: two or more objectives, each a task metric, a metric function that declares its
    direction, or a measurement (:data:`hpsearch.config.measurements.OBJECTIVES`); returns (name, direction)
    pairs ([] without it)."""
    raw = study.get("metrics")
    if raw is None:
        if "directions" in study:
            c.add("study.directions", study["directions"], "goes with study.metrics (several objectives); one "
                                                           "objective has study.direction")
        return []
    if "metric" in study and (not isinstance(raw, list) or study["metric"] not in raw):
        c.add("study.metric", study["metric"], "give study.metric (one objective) or study.metrics (several), "
                                               "not both (with both, the metric is the one of them that "
                                               "checkpoints follow)")
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(m, str) for m in raw):
        c.add("study.metrics", raw, "must be a list of two or more metric names (one objective: study.metric)")
        return []
    if len(set(raw)) != len(raw):
        c.add("study.metrics", raw, "has duplicates")
    out = []
    for i, name in enumerate(raw):
        direction = _objective_direction(c, f"study.metrics[{i}]", name, metrics)
        if direction is not None:
            out.append((name, direction))
    return out


def _objective_direction(c: Checker, key: str, name: str, metrics: dict) -> str | None:
    """The direction of one of several objectives (None: a problem, recorded)."""
    if name in metrics:
        return metrics[name].direction
    if name in OBJECTIVES:
        return "minimize"
    if not metric_functions.is_user_metric(name):
        c.add(key, name, f"is not a metric of this task ({', '.join(metrics)}), a measurement "
                         f"({', '.join(OBJECTIVES)}) or a package.module:function")
        return None
    try:
        direction = metric_functions.declared_direction(metric_functions.load(name))
    except ValueError as exc:
        c.add(key, name, str(exc))
        return None
    if direction is None:
        c.add(key, name, "a metric function among several objectives declares its direction (a direction "
                         "attribute, or greater_is_better)")
    return direction


def _several_objectives(c: Checker, study: dict, sampler: Any, pruner: dict, confirm: dict | None) -> tuple:
    """What several objectives change: a sampler that takes them, no pruner, no confirmation."""
    if sampler not in (MISSING, *MULTI_OBJECTIVE_SAMPLERS):
        c.add("study.sampler.name", sampler, f"takes one objective; with study.metrics use one of "
                                             f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
    if "pruner" in study and pruner.get("name") not in ("none", MISSING):
        c.add("study.pruner.name", pruner["name"], "Optuna prunes single-objective studies only: with "
                                                  "study.metrics use pruner: none (the default then)")
    if confirm:
        c.add("study.confirm", study.get("confirm"), "ranks one objective; drop it with study.metrics")
    return {"name": "none", "options": {}}, confirm


def _check_sampler(c: Checker, raw: Any, params: dict) -> dict:
    """``{name, seed, options}``, options checked against the Optuna class; a grid needs steps."""
    import optuna  # light: no torch; needed to check options against the samplers' constructors

    sampler = c.mapping({"name": raw} if isinstance(raw, str) else raw, "study.sampler", keys(Sampler))
    name = c.string(sampler, "name", "study.sampler", default=default(Sampler, "name"), choices=SAMPLERS)
    seed = c.integer(sampler, "seed", "study.sampler", default=None, low=0)
    target = getattr(optuna.samplers, SAMPLERS[name]) if name is not MISSING else None
    reserved = ("seed", "search_space") if name == "grid" else ("seed",)
    options = c.options(sampler, "options", "study.sampler", target, reserved)
    if name == "grid":
        if not params:
            c.add("study.sampler.name", "grid", "needs at least one searched parameter in params")
        for pname, spec in params.items():
            if spec.get("type") == "float" and "step" not in spec:
                c.add(f"params.{pname}.step", MISSING, "is required by the grid sampler for a float parameter")
    return {"name": name, "seed": seed, "options": options}


def _check_pruner(c: Checker, raw: Any, path: str) -> dict:
    """``{name, options}`` (and ``wrapped``, a pruner of the same form, for ``patient``), options checked by name."""
    import optuna

    pruner = c.mapping({"name": raw} if isinstance(raw, str) else raw, path, keys(Pruner))
    name = c.string(pruner, "name", path, default=default(Pruner, "name"), choices=PRUNERS)
    target = getattr(optuna.pruners, PRUNERS[name]) if name is not MISSING else None
    options = c.options(pruner, "options", path, target, reserved=("wrapped_pruner",))
    if name == "percentile" and "percentile" not in options:
        c.add(f"{path}.options.percentile", MISSING, "is required by the percentile pruner (e.g. 25.0)")
    out = {"name": name, "options": options}
    if name == "patient":
        if "patience" not in options:
            c.add(f"{path}.options.patience", MISSING, "is required by the patient pruner (reports, e.g. 2)")
        wrapped = pruner.get("wrapped")
        out["wrapped"] = None if wrapped is None else _check_pruner(c, wrapped, f"{path}.wrapped")
        if out["wrapped"] and out["wrapped"]["name"] == "patient":
            c.add(f"{path}.wrapped.name", "patient", "a patient pruner wraps another kind of pruner")
    elif "wrapped" in pruner:
        c.add(f"{path}.wrapped", pruner["wrapped"], "is only for name: patient")
    return out


def _check_constraints(c: Checker, raw: Any) -> list[str]:
    """``study.constraints``: a list of ``ATTRIBUTE OP NUMBER`` (OP one of <= < >= >) on measured attributes."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.add("study.constraints", raw, "must be a list such as ['peak_memory_mb <= 20000', 'train_time_s <= 900']")
        return []
    out = []
    for i, text in enumerate(raw):
        key = f"study.constraints[{i}]"
        try:
            (clause,) = conditions.parse(text)
        except ValueError as exc:
            c.add(key, text, f"{exc}; one bound per entry" if "cannot" not in str(exc) else str(exc))
            continue
        if clause.name not in CONSTRAINTS:
            close = difflib.get_close_matches(clause.name, list(CONSTRAINTS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            c.add(key, text, f"'{clause.name}' is not an attribute a trial records; {hint}one of "
                             f"{', '.join(CONSTRAINTS)}")
        elif clause.op not in ("<=", "<", ">=", ">"):
            c.add(key, text, f"bound it with <=, <, >= or >, not {clause.op}")
        else:
            out.append(f"{clause.name} {clause.op} {clause.value}")
    return out


def _check_early_stopping(c: Checker, raw: Any) -> dict | None:
    """``{patience, min_delta}`` or null (off): stop after ``patience`` checkpoints without a gain > min_delta."""
    if raw is None or raw is False:
        return None
    stop = c.mapping(raw, "study.early_stopping", keys(EarlyStopping))
    if not stop:
        return None
    patience = c.integer(stop, "patience", "study.early_stopping", default=MISSING, low=1)
    if "patience" not in stop:
        c.add("study.early_stopping.patience", MISSING, "is required (checkpoints without improvement, e.g. 2)")
    min_delta = as_number(stop.get("min_delta", default(EarlyStopping, "min_delta")))
    if min_delta is None or min_delta < 0 or not math.isfinite(min_delta):
        c.add("study.early_stopping.min_delta", stop.get("min_delta"), "must be a number >= 0")
        min_delta = 0.0
    return {"patience": patience, "min_delta": float(min_delta)}


def _check_confirm(c: Checker, raw: Any) -> dict | None:
    """``{top_k, folds}`` (each defaulted; ``true`` or ``{}`` for both defaults) or null / false (off): confirm the
    best ``top_k`` trials on ``folds`` cross-validation folds before one is chosen (:mod:`hpsearch.study.confirm`)."""
    if raw is None or raw is False:
        return None
    confirm = c.mapping({} if raw is True else raw, "study.confirm", keys(Confirm))
    top_k = c.integer(confirm, "top_k", "study.confirm", default=default(Confirm, "top_k"), low=1)
    folds = c.integer(confirm, "folds", "study.confirm", default=default(Confirm, "folds"), low=1)
    return {"top_k": top_k, "folds": folds}


def _check_enqueue(c: Checker, raw: Any, params: dict) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.add("study.enqueue", raw, "must be a list of {param: value} mappings")
        return []
    out = []
    for i, entry in enumerate(raw):
        path = f"study.enqueue[{i}]"
        if not isinstance(entry, dict):
            c.add(path, entry, "must be a mapping of searched params to values")
            continue
        norm = {}
        for name, value in entry.items():
            if name not in params:
                why = "is not a searched parameter (it is fixed or unknown)"
                c.add(f"{path}.{name}", value, why + (f"; searched: {', '.join(params)}" if params else ""))
                continue
            value, problem = hp_value(name, value)
            spec = params[name]
            if problem:
                c.add(f"{path}.{name}", value, f"{name} {problem}")
            elif spec.get("type") == "categorical" and value not in spec["choices"]:
                c.add(f"{path}.{name}", value, f"is not among choices {spec['choices']}")
            elif "low" in spec and "high" in spec and not spec["low"] <= value <= spec["high"]:
                c.add(f"{path}.{name}", value, f"is outside [{spec['low']}, {spec['high']}]")
            norm[name] = value
        out.append(norm)
    return out

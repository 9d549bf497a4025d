"""Validation of a raw space config: one pass that gathers every problem (file, key, value, why) at once.

It imports neither torch nor transformers and downloads nothing: a space file can be checked on a laptop with
only the CLI installed. What a task needs of the data section (its columns, options and metrics) comes from
the task (:mod:`hpsearch.tasks`), so a new task needs no change here.
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import MISSING, ConfigError, Issue
from ..tasks import TASKS, all_metrics, get_task
from . import conditions
from . import metrics as metric_functions
from .files import read_columns
from .space import Space
from .vocabulary import (
    ALL_LINEAR,
    ATTN_IMPLEMENTATIONS,
    CONFIRM_KEYS,
    CONSTRAINT_ATTRIBUTES,
    DATA_KEYS,
    DEFAULT_CONFIRM,
    DEFAULT_REPORTS_PER_EPOCH,
    DEFAULT_TRIAL_VALUE,
    DISTRIBUTED,
    DTYPES,
    EARLY_STOPPING_KEYS,
    EVAL_BATCH_TOKENS,
    FILE_FORMATS,
    FILE_SOURCE_KEYS,
    FIXED_KEYS,
    HUB_SOURCE_KEYS,
    HYPERPARAMETERS,
    MEASURED_OBJECTIVES,
    MODEL_KEYS,
    MULTI_OBJECTIVE_SAMPLERS,
    PARAM_KEYS,
    PARAM_TYPES,
    PRECISIONS,
    PRUNER_KEYS,
    PRUNERS,
    QUANTIZATIONS,
    SAMPLER_KEYS,
    SAMPLERS,
    STUDY_KEYS,
    TOP_KEYS,
    TRIAL_VALUES,
    lora_targets,
    model_layer_count,
)

# ---------------------------------------------------------------------------------------------------------------
# Validation: one pass that gathers every problem.


class _Checker:
    """Collects issues while walking a raw config; helpers return the normalized value or MISSING."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, key: str, value: object, message: str) -> None:
        self.issues.append(Issue(key, value, message))

    def mapping(self, value: Any, key: str, allowed: Iterable[str], required: bool = True) -> dict:
        if value is None or value is MISSING:
            if required:
                self.add(key, MISSING, "is required")
            return {}
        if not isinstance(value, dict):
            self.add(key, value, "must be a mapping")
            return {}
        allowed = tuple(allowed)
        for k in value:
            if k not in allowed:
                hint = difflib.get_close_matches(str(k), allowed, n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(allowed)}"
                self.add(_join(key, k), value[k], f"unknown key{extra}")
        return value

    def string(self, d: dict, key: str, path: str, default: Any = MISSING, choices: Iterable[str] = ()) -> Any:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            if default is MISSING:
                self.add(_join(path, key), MISSING, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(_join(path, key), value, "must be a non-empty string")
            return MISSING
        choices = tuple(choices)
        if choices and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            self.add(_join(path, key), value, f"must be one of {', '.join(choices)}{extra}")
            return MISSING
        return value

    def integer(self, d: dict, key: str, path: str, default: Any, low: int | None = None) -> Any:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            return default
        number = _as_number(value)
        if number is None or not float(number).is_integer():
            self.add(_join(path, key), value, "must be an integer")
            return MISSING
        if low is not None and number < low:
            self.add(_join(path, key), value, f"must be >= {low}")
            return MISSING
        return int(number)

    def boolean(self, d: dict, key: str, path: str, default: bool) -> Any:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            return default
        if not isinstance(value, bool):
            self.add(_join(path, key), value, "must be true or false")
            return MISSING
        return value

    def options(self, d: dict, key: str, path: str, target: Callable | None, reserved: Iterable[str] = ()) -> dict:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            return {}
        if not isinstance(value, dict):
            self.add(_join(path, key), value, "must be a mapping of constructor options")
            return {}
        if target is not None:
            accepted = [n for n in inspect.signature(target).parameters if n not in ("self", *reserved)]
            for name in value:
                if name not in accepted:
                    self.add(_join(path, key, name), value[name],
                             f"is not an option of {target.__qualname__}; it takes {', '.join(accepted) or 'none'}")
        return dict(value)


def _join(*parts: object) -> str:
    return ".".join(str(p) for p in parts if p != "")


def _as_number(value: Any) -> float | int | None:
    """A number, or a string YAML left unparsed such as '1e-5' (PyYAML needs a dot in floats)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
        return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f
    return None


def _hp_value(name: str, value: Any) -> tuple[Any, str | None]:
    """Normalize a hyperparameter value (numbers from strings, ints for int kinds); return (value, problem)."""
    hp = HYPERPARAMETERS[name]
    if name == "lora_target_modules" and isinstance(value, list):
        # A list in the file is stored as one comma-separated string: Optuna's categorical choices are scalars.
        if not value or not all(isinstance(v, str) and v.strip() and "," not in v for v in value):
            return value, "must be all-linear or a non-empty list of module names"
        value = ",".join(v.strip() for v in value)
    if hp.kind != "str":
        number = _as_number(value)
        if number is None:
            return value, hp.check(value)
        if hp.kind == "float":
            value = float(number)
        elif float(number).is_integer():
            value = int(number)
        else:
            value = number
    return value, hp.check(value)


def _check_params(c: _Checker, raw: Any) -> dict:
    params = c.mapping(raw, "params", HYPERPARAMETERS, required=False)
    out: dict[str, dict] = {}
    for name, spec in params.items():
        if name not in HYPERPARAMETERS:
            continue  # reported by mapping()
        path = f"params.{name}"
        hp = HYPERPARAMETERS[name]
        spec = c.mapping(spec, path, PARAM_KEYS)
        if not spec:
            continue
        spec = {k: v for k, v in spec.items() if k != "when"}  # conditions: _check_when
        ptype = spec.get("type", "categorical" if "choices" in spec else MISSING)
        out[name] = {"type": ptype}  # recorded even when invalid, so later checks know it is searched
        if ptype is MISSING:
            c.add(f"{path}.type", MISSING, f"is required: one of {', '.join(PARAM_TYPES)}")
            continue
        if ptype not in PARAM_TYPES:
            c.add(f"{path}.type", ptype, f"must be one of {', '.join(PARAM_TYPES)}")
            continue
        if ptype == "categorical":
            out[name] = _check_categorical(c, path, name, spec)
            continue
        if hp.kind == "str" or (hp.kind == "int" and ptype == "float") or (hp.kind == "float" and ptype == "int"):
            wanted = "categorical" if hp.kind == "str" else f"{hp.kind} or categorical"
            c.add(f"{path}.type", ptype, f"{name} must be searched as {wanted}")
            continue
        if "choices" in spec:
            c.add(f"{path}.choices", spec["choices"], "is only for type: categorical")
        bounds = {}
        for bound in ("low", "high"):
            if bound not in spec:
                c.add(f"{path}.{bound}", MISSING, f"is required for type: {ptype}")
                continue
            value, problem = _hp_value(name, spec[bound])
            if problem:
                c.add(f"{path}.{bound}", spec[bound], f"{name} {problem}")
            else:
                bounds[bound] = value
        log = spec.get("log", False)
        if not isinstance(log, bool):
            c.add(f"{path}.log", log, "must be true or false")
            log = False
        step = spec.get("step")
        if step is not None:
            number = _as_number(step)
            if number is None or number <= 0 or (ptype == "int" and not float(number).is_integer()):
                c.add(f"{path}.step", step, f"must be a positive {'integer' if ptype == 'int' else 'number'}")
                step = None
            else:
                step = int(number) if ptype == "int" else float(number)
            if log and step is not None:
                c.add(f"{path}.step", step, "cannot be combined with log: true (Optuna samples one or the other)")
        if len(bounds) == 2:
            low, high = bounds["low"], bounds["high"]
            if low > high:
                c.add(f"{path}.low", low, f"must be <= high ({high})")
            if log and low <= 0:
                c.add(f"{path}.low", low, "must be > 0 with log: true")
            out[name] = {"type": ptype, "low": low, "high": high, "log": log}
            if step is not None:
                out[name]["step"] = step
    return out


def _check_categorical(c: _Checker, path: str, name: str, spec: dict) -> dict:
    for extra in ("low", "high", "log", "step"):
        if extra in spec:
            c.add(f"{path}.{extra}", spec[extra], "is not used with type: categorical (give choices)")
    choices = spec.get("choices", MISSING)
    if choices is MISSING:
        c.add(f"{path}.choices", MISSING, "is required for type: categorical")
        return {"type": "categorical", "choices": []}
    if not isinstance(choices, list) or not choices:
        c.add(f"{path}.choices", choices, "must be a non-empty list")
        return {"type": "categorical", "choices": []}
    normalized = []
    for i, choice in enumerate(choices):
        value, problem = _hp_value(name, choice)
        if problem:
            c.add(f"{path}.choices[{i}]", choice, f"{name} {problem}")
        normalized.append(value)
    if len(set(map(repr, normalized))) != len(normalized):
        c.add(f"{path}.choices", choices, "has duplicates")
    return {"type": "categorical", "choices": normalized}


def _check_fixed(c: _Checker, raw: Any, params: dict) -> dict:
    fixed = c.mapping(raw, "fixed", HYPERPARAMETERS, required=False)
    out = {}
    for name, value in fixed.items():
        if name not in HYPERPARAMETERS:
            continue
        if isinstance(value, dict):  # {value: V, when: CONDITION}
            given = c.mapping(value, f"fixed.{name}", FIXED_KEYS)
            if "value" not in given:
                c.add(f"fixed.{name}.value", MISSING, "is required when a fixed hyperparameter is a mapping")
                continue
            value = given["value"]
        if name in params:
            c.add(f"fixed.{name}", value, "is also in params: a hyperparameter is either searched or fixed")
            continue
        value, problem = _hp_value(name, value)
        if problem:
            c.add(f"fixed.{name}", value, f"{name} {problem}")
        out[name] = value
    full = {name: hp.default for name, hp in HYPERPARAMETERS.items() if name not in params}
    full.update(out)
    return full


def _check_when(c: _Checker, raw: dict, params: dict, fixed: dict) -> dict[str, str]:
    """Every condition (``params.X.when``, ``fixed.X: {value, when}`` or the top-level ``when: {X: ...}``, where
    the normalized config keeps them all): readable, on known hyperparameters, without cycles, able to hold."""
    given: dict[str, tuple[str, Any]] = {}
    for name, spec in (raw.get("params") or {}).items() if isinstance(raw.get("params"), dict) else []:
        if isinstance(spec, dict) and "when" in spec:
            given[name] = (f"params.{name}.when", spec["when"])
    for name, value in (raw.get("fixed") or {}).items() if isinstance(raw.get("fixed"), dict) else []:
        if isinstance(value, dict) and "when" in value:
            given[name] = (f"fixed.{name}.when", value["when"])
    top = c.mapping(raw.get("when", {}), "when", HYPERPARAMETERS, required=False)
    for name, cond in top.items():
        if name in given:
            c.add(f"when.{name}", cond, f"{name} already has a condition at {given[name][0]}")
        elif name in HYPERPARAMETERS:
            given[name] = (f"when.{name}", cond)
    parsed: dict[str, list] = {}
    for name, (key, text) in given.items():
        if name not in HYPERPARAMETERS:
            continue
        try:
            clauses = conditions.parse(text)
        except ValueError as exc:
            c.add(key, text, str(exc))
            continue
        ok = True
        for clause in clauses:
            if clause.name not in HYPERPARAMETERS:
                c.add(key, text, f"names '{clause.name}', not a hyperparameter{_did_you_mean(clause.name)}")
                ok = False
            elif clause.name == name:
                c.add(key, text, f"{name} cannot depend on itself")
                ok = False
            else:
                domain = params[clause.name] if clause.name in params else {"value": fixed.get(clause.name)}
                if not conditions.can_hold(clause, domain):
                    where = "its choices" if "choices" in domain else (
                        "its range" if "low" in domain else f"its fixed value {domain.get('value')!r}")
                    c.add(key, text, f"can never hold: '{clause.name} {clause.op} {clause.value}' is false for "
                                     f"{where}")
                    ok = False
        if ok:
            parsed[name] = clauses
    try:
        conditions.order(parsed, list(parsed))
    except ValueError as exc:
        c.add("when", MISSING, f"conditions depend on each other in a cycle: {exc}")
    return {name: given[name][1] for name in parsed}


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(HYPERPARAMETERS), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_user_metric(c: _Checker, path: str, task: Any, direction: Any) -> Any:
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
    declared = metric_functions.declared_direction(fn)
    if direction in (None, MISSING):
        if declared is None:
            c.add("study.direction", MISSING, f"is required with metric {path} (or give the function a direction "
                                              f"attribute): maximize or minimize")
        return declared or MISSING
    if declared is not None and declared != direction:
        c.add("study.direction", direction, f"contradicts {path}, which declares {declared}")
    return direction


def _check_study(c: _Checker, raw: Any, task: Any, params: dict, default_name: str) -> dict:
    import optuna  # light: no torch; needed to check sampler and pruner options against their constructors

    study = {k: v for k, v in c.mapping(raw, "study", STUDY_KEYS, required=False).items() if v is not None}
    name = c.string(study, "name", "study", default=default_name)
    known = all_metrics()
    if task in TASKS:
        metrics = {m.name: m for m in get_task(task).metrics}
        default_metric = get_task(task).default_metric
    else:  # the task itself was reported: accept any metric rather than pile up follow-on errors
        metrics, default_metric = known, "accuracy"
    objectives = _check_objectives(c, study, task, metrics)
    given = study.get("metric")
    user = metric_functions.is_user_metric(given)
    if objectives:  # the first evaluated one is what the live view, reports and checkpoints follow
        evaluated = [(m, d) for m, d in objectives if m not in MEASURED_OBJECTIVES]
        if not evaluated:
            c.add("study.metrics", [m for m, _ in objectives], "needs at least one evaluated metric (the task's, or "
                                                               "a metric function) besides measurements")
            evaluated = objectives
        chosen = [(m, d) for m, d in evaluated if m == given]
        (metric, direction), user = (chosen or evaluated)[0], False
        if study.get("direction") not in (None, direction):
            c.add("study.direction", study["direction"], f"each of study.metrics has its own direction ({metric}: "
                                                         f"{direction})")
        if study.get("directions") not in (None, [d for _, d in objectives]):
            c.add("study.directions", study["directions"], f"contradicts the metrics' own directions "
                                                           f"({', '.join(d for _, d in objectives)})")
    else:
        metric = given if user else c.string(study, "metric", "study", default=default_metric, choices=list(metrics))
        direction = c.string(study, "direction", "study", default=None, choices=("maximize", "minimize"))
    if objectives:
        pass
    elif user:
        direction = _check_user_metric(c, given, task, direction)
    elif metric is not MISSING:
        natural = metrics[metric].direction
        if direction not in (None, MISSING) and direction != natural:
            c.add("study.direction", direction, f"contradicts metric '{metric}', which improves by {natural[:-1]}ing")
        direction = natural

    sampler_raw = study.get("sampler", {"name": "tpe"})
    if isinstance(sampler_raw, str):
        sampler_raw = {"name": sampler_raw}
    sampler = c.mapping(sampler_raw, "study.sampler", SAMPLER_KEYS)
    sampler_name = c.string(sampler, "name", "study.sampler", default="tpe", choices=SAMPLERS)
    seed = c.integer(sampler, "seed", "study.sampler", default=None, low=0)
    target = getattr(optuna.samplers, SAMPLERS[sampler_name]) if sampler_name is not MISSING else None
    reserved = ("seed", "search_space") if sampler_name == "grid" else ("seed",)
    sampler_options = c.options(sampler, "options", "study.sampler", target, reserved)
    if sampler_name == "grid":
        if not params:
            c.add("study.sampler.name", "grid", "needs at least one searched parameter in params")
        for pname, spec in params.items():
            if spec.get("type") == "float" and "step" not in spec:
                c.add(f"params.{pname}.step", MISSING, "is required by the grid sampler for a float parameter")

    pruner_raw = study.get("pruner", {"name": "median"})
    if isinstance(pruner_raw, str):
        pruner_raw = {"name": pruner_raw}
    pruner_cfg = _check_pruner(c, pruner_raw, "study.pruner", optuna)
    if sampler_name == "gp" and pruner_cfg["name"] not in ("none", MISSING):
        # GPSampler fits completed trials only: a pruned trial leaves its model unchanged, so it proposes the same
        # config again (bench/README.md: 12 identical pruned trials in a row on the search benchmark).
        c.add("study.pruner.name", pruner_cfg["name"], "the gp sampler learns nothing from pruned trials and "
              "proposes a pruned config again; use pruner: none with gp (or another sampler)")

    # One evaluation per epoch by default, pruner or not: epoch ends are whole-validation checkpoints, so the
    # pruner decides on the same numbers a trial reports (bench/README.md, "Lever runs").
    reports = c.integer(study, "reports_per_epoch", "study", default=DEFAULT_REPORTS_PER_EPOCH, low=1)
    subset = c.integer(study, "intermediate_eval_samples", "study", default=256, low=1)
    enqueue = _check_enqueue(c, study.get("enqueue"), params)
    trial_value = c.string(study, "trial_value", "study", default=DEFAULT_TRIAL_VALUE, choices=TRIAL_VALUES)
    early_stopping = _check_early_stopping(c, study.get("early_stopping"))
    confirm = _check_confirm(c, study.get("confirm", DEFAULT_CONFIRM))
    deterministic = c.boolean(study, "deterministic", "study", default=False)
    constraints = _check_constraints(c, study.get("constraints"))
    if objectives:
        if sampler_name not in (MISSING, *MULTI_OBJECTIVE_SAMPLERS):
            c.add("study.sampler.name", sampler_name, f"takes one objective; with study.metrics use one of "
                                                       f"{', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
        if "pruner" in study and pruner_cfg.get("name") not in ("none", MISSING):
            c.add("study.pruner.name", pruner_cfg["name"], "Optuna prunes single-objective studies only: with "
                                                          "study.metrics use pruner: none (the default then)")
        pruner_cfg = {"name": "none", "options": {}}
        if confirm:
            c.add("study.confirm", study.get("confirm"), "ranks one objective; drop it with study.metrics")
    return {
        "name": name,
        "direction": direction,
        "metric": metric,
        "sampler": {"name": sampler_name, "seed": seed, "options": sampler_options},
        "pruner": pruner_cfg,
        "reports_per_epoch": reports,
        "intermediate_eval_samples": subset,
        "enqueue": enqueue,
        "trial_value": trial_value,
        "early_stopping": early_stopping,
        "confirm": confirm,
        "deterministic": deterministic,
        **({"constraints": constraints} if constraints else {}),
        **({"metrics": [m for m, _ in objectives], "directions": [d for _, d in objectives]} if objectives else {}),
    }


def _check_objectives(c: _Checker, study: dict, task: Any, metrics: dict) -> list[tuple[str, str]]:
    """``study.metrics``: two or more objectives, each a task metric, a metric function that declares its
    direction, or a measurement (:data:`MEASURED_OBJECTIVES`); returns (name, direction) pairs ([] without it)."""
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
        key = f"study.metrics[{i}]"
        if name in metrics:
            out.append((name, metrics[name].direction))
        elif name in MEASURED_OBJECTIVES:
            out.append((name, "minimize"))
        elif metric_functions.is_user_metric(name):
            try:
                direction = metric_functions.declared_direction(metric_functions.load(name))
            except ValueError as exc:
                c.add(key, name, str(exc))
                continue
            if direction is None:
                c.add(key, name, "a metric function among several objectives declares its direction (a direction "
                                 "attribute, or greater_is_better)")
                continue
            out.append((name, direction))
        else:
            c.add(key, name, f"is not a metric of this task ({', '.join(metrics)}), a measurement "
                             f"({', '.join(MEASURED_OBJECTIVES)}) or a package.module:function")
    return out


def _check_constraints(c: _Checker, raw: Any) -> list[str]:
    """``study.constraints``: a list of ``ATTRIBUTE OP NUMBER`` (OP one of <= < >= >) on recorded attributes."""
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
        if clause.name not in CONSTRAINT_ATTRIBUTES:
            close = difflib.get_close_matches(clause.name, list(CONSTRAINT_ATTRIBUTES), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            c.add(key, text, f"'{clause.name}' is not an attribute a trial records; {hint}one of "
                             f"{', '.join(CONSTRAINT_ATTRIBUTES)}")
        elif clause.op not in ("<=", "<", ">=", ">"):
            c.add(key, text, f"bound it with <=, <, >= or >, not {clause.op}")
        else:
            out.append(f"{clause.name} {clause.op} {clause.value}")
    return out


def _check_pruner(c: _Checker, raw: Any, path: str, optuna: Any) -> dict:
    """``{name, options}`` (and ``wrapped``, a pruner of the same form, for ``patient``), options checked by name."""
    if isinstance(raw, str):
        raw = {"name": raw}
    pruner = c.mapping(raw, path, PRUNER_KEYS)
    name = c.string(pruner, "name", path, default="median", choices=PRUNERS)
    target = getattr(optuna.pruners, PRUNERS[name]) if name is not MISSING else None
    options = c.options(pruner, "options", path, target, reserved=("wrapped_pruner",))
    if name == "percentile" and "percentile" not in options:
        c.add(f"{path}.options.percentile", MISSING, "is required by the percentile pruner (e.g. 25.0)")
    out = {"name": name, "options": options}
    if name == "patient":
        if "patience" not in options:
            c.add(f"{path}.options.patience", MISSING, "is required by the patient pruner (reports, e.g. 2)")
        wrapped = pruner.get("wrapped")
        out["wrapped"] = None if wrapped is None else _check_pruner(c, wrapped, f"{path}.wrapped", optuna)
        if out["wrapped"] and out["wrapped"]["name"] == "patient":
            c.add(f"{path}.wrapped.name", "patient", "a patient pruner wraps another kind of pruner")
    elif "wrapped" in pruner:
        c.add(f"{path}.wrapped", pruner["wrapped"], "is only for name: patient")
    return out


def _check_early_stopping(c: _Checker, raw: Any) -> dict | None:
    """``{patience, min_delta}`` or null (off): stop after ``patience`` checkpoints without a gain > min_delta."""
    if raw is None or raw is False:
        return None
    stop = c.mapping(raw, "study.early_stopping", EARLY_STOPPING_KEYS)
    if not stop:
        return None
    patience = c.integer(stop, "patience", "study.early_stopping", default=MISSING, low=1)
    if "patience" not in stop:
        c.add("study.early_stopping.patience", MISSING, "is required (checkpoints without improvement, e.g. 2)")
    min_delta = _as_number(stop.get("min_delta", 0.0))
    if min_delta is None or min_delta < 0 or not math.isfinite(min_delta):
        c.add("study.early_stopping.min_delta", stop.get("min_delta"), "must be a number >= 0")
        min_delta = 0.0
    return {"patience": patience, "min_delta": float(min_delta)}


def _check_confirm(c: _Checker, raw: Any) -> dict | None:
    """``{top_k, folds}`` (each defaulted; ``true`` or ``{}`` for both defaults) or null / false (off): confirm the
    best ``top_k`` trials on ``folds`` cross-validation folds before one is chosen (:mod:`hpsearch.study.confirm`)."""
    if raw is None or raw is False:
        return None
    confirm = c.mapping({} if raw is True else raw, "study.confirm", CONFIRM_KEYS)
    top_k = c.integer(confirm, "top_k", "study.confirm", default=3, low=1)
    folds = c.integer(confirm, "folds", "study.confirm", default=2, low=1)
    return {"top_k": top_k, "folds": folds}


def _check_enqueue(c: _Checker, raw: Any, params: dict) -> list[dict]:
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
            value, problem = _hp_value(name, value)
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


def _check_model(c: _Checker, raw: Any) -> dict:
    model = c.mapping(raw, "model", MODEL_KEYS)
    name = c.string(model, "name_or_path", "model")
    max_length = c.integer(model, "max_length", "model", default=128, low=2)
    trust = c.boolean(model, "trust_remote_code", "model", default=False)
    revision = c.string(model, "revision", "model", default=None)
    precision = c.string(model, "precision", "model", default="auto", choices=PRECISIONS)
    dtype = c.string(model, "dtype", "model", default="auto", choices=DTYPES)
    attn = c.string(model, "attn_implementation", "model", default="auto", choices=ATTN_IMPLEMENTATIONS)
    checkpointing = c.boolean(model, "gradient_checkpointing", "model", default=False)
    quantization = c.string(model, "quantization", "model", default="none", choices=QUANTIZATIONS)
    eval_tokens = c.integer(model, "eval_batch_tokens", "model", default=EVAL_BATCH_TOKENS, low=1)
    distributed = c.string(model, "distributed", "model", default="ddp", choices=DISTRIBUTED)
    if precision == "fp32" and dtype in ("bfloat16", "float16"):
        c.add("model.dtype", dtype, "keeps frozen weights in half precision, which precision: fp32 cannot compute "
                                    "with; use precision bf16 or fp16 (mixed), or dtype float32")
    if precision == "bf16-true" and dtype not in ("auto", "bfloat16"):
        c.add("model.dtype", dtype, "precision bf16-true trains every weight in bfloat16; drop model.dtype")
    layers = None
    if isinstance(name, str):
        local = Path(name).expanduser()
        if local.is_dir():
            cfg_file = local / "config.json"
            if not cfg_file.is_file():
                c.add("model.name_or_path", name, "is a directory without config.json: not a transformers model")
            else:
                layers = model_layer_count(json.loads(cfg_file.read_text(encoding="utf-8")))
        elif _looks_like_path(name):
            c.add("model.name_or_path", name, "no such directory (a hub id looks like 'org/name')")
    return {"name_or_path": name, "max_length": max_length, "trust_remote_code": trust, "revision": revision,
            "precision": precision, "dtype": dtype, "attn_implementation": attn,
            "gradient_checkpointing": checkpointing, "quantization": quantization, "eval_batch_tokens": eval_tokens,
            "distributed": distributed, "_layers": layers}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name



def _check_data(c: _Checker, raw: Any) -> dict:
    """The data section: the task, its columns (defaults the sources may override) and options, both sources."""
    task_name = raw.get("task", "classification") if isinstance(raw, dict) else "classification"
    task = get_task(task_name) if task_name in TASKS else None
    column_keys = tuple(col.key for col in task.columns) if task else ()
    option_keys = tuple(task.options) if task else ()
    # An unknown task is reported once (below), not as one "unknown key" per column it would have taken.
    allowed = DATA_KEYS + column_keys + option_keys if task or not isinstance(raw, dict) else tuple(raw)
    data = c.mapping(raw, "data", allowed)
    task_name = c.string(data, "task", "data", default="classification", choices=TASKS)
    columns = {col.key: c.string(data, col.key, "data", default=col.default) for col in (task.columns if task else ())}
    out = {"task": task_name, **columns}
    for key, default in (task.options.items() if task else ()):
        out[key] = _check_option(c, data, key, default, getattr(task, "option_choices", {}).get(key, ()),
                                 getattr(task, "option_checks", {}).get(key))
    splits = ("train", "validation", "test") if isinstance(data, dict) and data.get("test") is not None else (
        "train", "validation")
    for split in splits:
        if task is None:  # which columns a source may name depends on the task: fix the task first
            out[split] = data.get(split, MISSING)
            continue
        out[split] = _check_source(c, data.get(split, MISSING), f"data.{split}", columns)
        if task and out[split]:
            resolved = {key: out[split].get(key) for key in column_keys}
            own = data.get(split) if isinstance(data.get(split), dict) else {}
            for key, why in task.column_problems(resolved):
                where = f"data.{split}.{key}" if key in own else f"data.{key}"
                if not any(i.key == where for i in c.issues):
                    c.add(where, resolved.get(key) or MISSING, why)
    out["max_train_samples"] = c.integer(data, "max_train_samples", "data", default=None, low=1)
    out["max_eval_samples"] = c.integer(data, "max_eval_samples", "data", default=None, low=1)
    return out


def _check_source(c: _Checker, raw: Any, path: str, defaults: dict) -> dict:
    if isinstance(raw, str):
        raw = {"path": raw}
    if isinstance(raw, dict) and "hub" in raw:
        src = c.mapping(raw, path, HUB_SOURCE_KEYS + tuple(defaults))
        out = {"hub": c.string(src, "hub", path), "config": c.string(src, "config", path, default=None),
               "split": c.string(src, "split", path, default=path.rsplit(".", 1)[-1]),
               "revision": c.string(src, "revision", path, default=None)}
    else:
        src = c.mapping(raw, path, FILE_SOURCE_KEYS + tuple(defaults))
        if not src:
            return {}
        file = c.string(src, "path", path)
        fmt = c.string(src, "format", path, default=None, choices=sorted(set(FILE_FORMATS.values())))
        if isinstance(file, str) and fmt is None:
            fmt = FILE_FORMATS.get(Path(file).suffix.lower())
            if fmt is None:
                c.add(f"{path}.path", file,
                      f"has an unknown extension; name the format ({', '.join(sorted(set(FILE_FORMATS.values())))})")
        out = {"path": file, "format": fmt}
    for key in defaults:
        out[key] = c.string(src, key, path, default=defaults[key])
    if out.get("path") not in (None, MISSING) and out.get("format") not in (None, MISSING):
        _check_file_columns(c, path, out, tuple(defaults))
    return out


def _check_option(c: _Checker, data: dict, key: str, default: Any, choices: tuple,
                  check: Callable[[Any], str | None] | None = None) -> Any:
    """A task option (``label_all_tokens``, ``num_beams`` ...): its default, or a value among its choices or
    that passes the task's check."""
    value = data.get(key, MISSING)
    if value is MISSING or value is None:
        return default
    why = f"must be one of {', '.join(map(str, choices))}" if choices and value not in choices else None
    why = why or (check(value) if check is not None else None)
    if why:
        c.add(f"data.{key}", value, why)
        return MISSING
    return value


def _check_file_columns(c: _Checker, path: str, src: dict, keys: tuple[str, ...]) -> None:
    """The file exists and has the columns the task's keys name (a CoNLL file has positions, not names)."""
    file = Path(src["path"]).expanduser()
    if not file.is_file():
        c.add(f"{path}.path", src["path"], "no such file")
        return
    if src["format"] == "conll":
        return
    try:
        header = read_columns(file, src["format"])
    except Exception as exc:  # any parse failure is a config problem to report, not a crash
        c.add(f"{path}.path", src["path"], f"cannot be read as {src['format']}: {exc}")
        return
    for key in keys:
        col = src.get(key)
        if isinstance(col, str) and col not in header:
            c.add(f"{path}.{key}", col, f"is not a column of {src['path']}; its columns are: {', '.join(header)}")



def _check_frozen_layers(c: _Checker, params: dict, fixed: dict, layers: int | None, model_name: Any) -> None:
    if layers is None:
        return
    if "num_frozen_layers" in params:
        spec = params["num_frozen_layers"]
        top = max(spec["choices"], default=None) if "choices" in spec else spec.get("high")
        key = "params.num_frozen_layers." + ("choices" if "choices" in spec else "high")
    else:
        top, key = fixed.get("num_frozen_layers", 0), "fixed.num_frozen_layers"
    if isinstance(top, int) and top > layers:
        c.add(key, top, f"exceeds the {layers} encoder layers of model {model_name}")




def validate(raw: Any, source: str = "<config>", default_name: str = "hpsearch") -> Space:
    """Check a raw config (as parsed from YAML) and return a Space, or raise ConfigError listing every problem."""
    c = _Checker()
    if not isinstance(raw, dict):
        raise ConfigError(source, [Issue("", raw, "must be a mapping with study, model, data, params and fixed")])
    c.mapping(raw, "", TOP_KEYS)
    params = _check_params(c, raw.get("params"))
    fixed = _check_fixed(c, raw.get("fixed"), params)
    when = _check_when(c, raw, params, fixed)
    model = _check_model(c, raw.get("model", MISSING))
    data = _check_data(c, raw.get("data", MISSING))
    study = _check_study(c, raw.get("study"), data.get("task"), params, default_name)
    if when and isinstance(study.get("sampler"), dict) and study["sampler"].get("name") == "grid":
        c.add("study.sampler.name", "grid", "cannot search conditional parameters (when:): a grid is one fixed set "
                                           "of combinations; use tpe or random")
    layers = model.pop("_layers")
    _check_frozen_layers(c, params, fixed, layers, model.get("name_or_path"))
    _check_quantization(c, model.get("quantization"), params, fixed)
    if c.issues:
        raise ConfigError(source, c.issues)
    config = {"study": study, "model": model, "data": data, "params": params, "fixed": fixed}
    if when:
        config["when"] = when
    if isinstance(raw.get("origin"), dict):
        config["origin"] = raw["origin"]
    return Space(config, source)




def _check_quantization(c: _Checker, quantization: Any, params: dict, fixed: dict) -> None:
    """Quantized weights cannot be trained: every trial must train LoRA adapters on them (QLoRA)."""
    if quantization in (None, "none", MISSING):
        return
    spec = params.get("lora_r")
    lowest = fixed.get("lora_r", 0) if spec is None else min(spec.get("choices") or [spec.get("low", 0)])
    if isinstance(lowest, int) and lowest < 1:
        key = "fixed.lora_r" if spec is None else "params.lora_r"
        c.add(key, lowest, f"must be > 0 in every trial with model.quantization {quantization}: quantized weights "
                           f"are not trained, LoRA adapters on them are")


def check_layers(space: Space, layers: int | None) -> None:
    """Raise ConfigError if num_frozen_layers exceeds ``layers`` (for hub models, once their config is read)."""
    c = _Checker()
    _check_frozen_layers(c, space.params, space.fixed, layers, space.config["model"]["name_or_path"])
    if c.issues:
        raise ConfigError(space.source, c.issues)




def check_lora_targets(space: Space, linear_names: list[str]) -> None:
    """Raise ConfigError if ``lora_target_modules`` (fixed, or any searched choice) names a module that is not one
    of the model's linear layers ``linear_names`` (checked once the model's config is read, before any trial)."""
    c = _Checker()
    spec = space.params.get("lora_target_modules")
    values = ([("params.lora_target_modules.choices", v) for v in spec.get("choices", [])] if spec
              else [("fixed.lora_target_modules", space.fixed["lora_target_modules"])])
    known = set(linear_names)
    for key, value in values:
        wanted = lora_targets(value)
        missing = [] if wanted == ALL_LINEAR else [n for n in wanted if n not in known]
        if missing:
            c.add(key, value, f"names no linear layer of the model ({', '.join(missing)}); its linear layers are "
                              f"{', '.join(linear_names)}, or use all-linear")
    if c.issues:
        raise ConfigError(space.source, c.issues)


def uses_lora(space: Space) -> bool:
    """Whether any trial of the space can have ``lora_r`` > 0."""
    spec = space.params.get("lora_r")
    if spec is None:
        return space.fixed["lora_r"] > 0
    return max(spec.get("choices") or [spec["high"]]) > 0

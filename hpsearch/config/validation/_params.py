"""The hyperparameters of a space: ``params`` (searched), ``fixed`` and their conditions (``when``), and the checks
that need the model's config (its layer count, its linear layers, LoRA under quantization)."""
from __future__ import annotations

from typing import Any

from ...errors import MISSING, ConfigError
from .. import conditions
from ..vocabulary import ALL_LINEAR, FIXED_KEYS, HYPERPARAMETERS, PARAM_KEYS, PARAM_TYPES, lora_targets
from ._checker import Checker, as_number, did_you_mean, hp_value


def check_params(c: Checker, raw: Any) -> dict:
    """``params``: each searched hyperparameter's type and range (or choices), normalized."""
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
        spec = {k: v for k, v in spec.items() if k != "when"}  # conditions: check_when
        ptype = spec.get("type", "categorical" if "choices" in spec else MISSING)
        out[name] = {"type": ptype}  # recorded even when invalid, so later checks know it is searched
        if ptype is MISSING:
            c.add(f"{path}.type", MISSING, f"is required: one of {', '.join(PARAM_TYPES)}")
        elif ptype not in PARAM_TYPES:
            c.add(f"{path}.type", ptype, f"must be one of {', '.join(PARAM_TYPES)}")
        elif ptype == "categorical":
            out[name] = _check_categorical(c, path, name, spec)
        elif hp.kind == "str" or (hp.kind == "int" and ptype == "float") or (hp.kind == "float" and ptype == "int"):
            wanted = "categorical" if hp.kind == "str" else f"{hp.kind} or categorical"
            c.add(f"{path}.type", ptype, f"{name} must be searched as {wanted}")
        else:
            out[name] = _check_range(c, path, name, ptype, spec) or out[name]
    return out


def _check_range(c: Checker, path: str, name: str, ptype: str, spec: dict) -> dict | None:
    """A float or int parameter's ``low``, ``high``, ``log`` and ``step`` (None when the bounds are unusable)."""
    if "choices" in spec:
        c.add(f"{path}.choices", spec["choices"], "is only for type: categorical")
    bounds = {}
    for bound in ("low", "high"):
        if bound not in spec:
            c.add(f"{path}.{bound}", MISSING, f"is required for type: {ptype}")
            continue
        value, problem = hp_value(name, spec[bound])
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
        number = as_number(step)
        if number is None or number <= 0 or (ptype == "int" and not float(number).is_integer()):
            c.add(f"{path}.step", step, f"must be a positive {'integer' if ptype == 'int' else 'number'}")
            step = None
        else:
            step = int(number) if ptype == "int" else float(number)
        if log and step is not None:
            c.add(f"{path}.step", step, "cannot be combined with log: true (Optuna samples one or the other)")
    if len(bounds) != 2:
        return None
    low, high = bounds["low"], bounds["high"]
    if low > high:
        c.add(f"{path}.low", low, f"must be <= high ({high})")
    if log and low <= 0:
        c.add(f"{path}.low", low, "must be > 0 with log: true")
    out = {"type": ptype, "low": low, "high": high, "log": log}
    if step is not None:
        out["step"] = step
    return out


def _check_categorical(c: Checker, path: str, name: str, spec: dict) -> dict:
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
        value, problem = hp_value(name, choice)
        if problem:
            c.add(f"{path}.choices[{i}]", choice, f"{name} {problem}")
        normalized.append(value)
    if len(set(map(repr, normalized))) != len(normalized):
        c.add(f"{path}.choices", choices, "has duplicates")
    return {"type": "categorical", "choices": normalized}


def check_fixed(c: Checker, raw: Any, params: dict) -> dict:
    """``fixed``: the given values, normalized, and every other hyperparameter not searched at its default."""
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
        value, problem = hp_value(name, value)
        if problem:
            c.add(f"fixed.{name}", value, f"{name} {problem}")
        out[name] = value
    full = {name: hp.default for name, hp in HYPERPARAMETERS.items() if name not in params}
    full.update(out)
    return full


def _given_conditions(c: Checker, raw: dict) -> dict[str, tuple[str, Any]]:
    """Every condition where a file may give it (``params.X.when``, ``fixed.X: {value, when}``, the top-level
    ``when: {X: ...}``), by hyperparameter: (the key it was given at, its text)."""
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
    return given


def check_when(c: Checker, raw: dict, params: dict, fixed: dict) -> dict[str, str]:
    """Every condition (the normalized config keeps them all in the top-level ``when``): readable, on known
    hyperparameters, without cycles, able to hold."""
    given = _given_conditions(c, raw)
    parsed: dict[str, list] = {}
    for name, (key, text) in given.items():
        if name not in HYPERPARAMETERS:
            continue
        try:
            clauses = conditions.parse(text)
        except ValueError as exc:
            c.add(key, text, str(exc))
            continue
        if all(_clause_ok(c, key, text, name, clause, params, fixed) for clause in clauses):
            parsed[name] = clauses
    try:
        conditions.order(parsed, list(parsed))
    except ValueError as exc:
        c.add("when", MISSING, f"conditions depend on each other in a cycle: {exc}")
    return {name: given[name][1] for name in parsed}


def _clause_ok(c: Checker, key: str, text: str, name: str, clause: conditions.Clause, params: dict,
               fixed: dict) -> bool:
    """Whether one clause of ``name``'s condition names another hyperparameter and can hold for its values."""
    if clause.name not in HYPERPARAMETERS:
        c.add(key, text, f"names '{clause.name}', not a hyperparameter{did_you_mean(clause.name)}")
        return False
    if clause.name == name:
        c.add(key, text, f"{name} cannot depend on itself")
        return False
    domain = params[clause.name] if clause.name in params else {"value": fixed.get(clause.name)}
    if not conditions.can_hold(clause, domain):
        where = "its choices" if "choices" in domain else (
            "its range" if "low" in domain else f"its fixed value {domain.get('value')!r}")
        c.add(key, text, f"can never hold: '{clause.name} {clause.op} {clause.value}' is false for {where}")
        return False
    return True


def check_frozen_layers(c: Checker, params: dict, fixed: dict, layers: int | None, model_name: Any) -> None:
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


def check_quantization(c: Checker, quantization: Any, params: dict, fixed: dict) -> None:
    """Quantized weights cannot be trained: every trial must train LoRA adapters on them (QLoRA)."""
    if quantization in (None, "none", MISSING):
        return
    spec = params.get("lora_r")
    lowest = fixed.get("lora_r", 0) if spec is None else min(spec.get("choices") or [spec.get("low", 0)])
    if isinstance(lowest, int) and lowest < 1:
        key = "fixed.lora_r" if spec is None else "params.lora_r"
        c.add(key, lowest, f"must be > 0 in every trial with model.quantization {quantization}: quantized weights "
                           f"are not trained, LoRA adapters on them are")


def check_layers(space: Any, layers: int | None) -> None:
    """Raise ConfigError if num_frozen_layers exceeds ``layers`` (for hub models, once their config is read)."""
    c = Checker()
    check_frozen_layers(c, space.params, space.fixed, layers, space.model.name_or_path)
    if c.issues:
        raise ConfigError(space.source, c.issues)


def check_lora_targets(space: Any, linear_names: list[str]) -> None:
    """Raise ConfigError if ``lora_target_modules`` (fixed, or any searched choice) names a module that is not one
    of the model's linear layers ``linear_names`` (checked once the model's config is read, before any trial)."""
    c = Checker()
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


def uses_lora(space: Any) -> bool:
    """Whether any trial of the space can have ``lora_r`` > 0."""
    spec = space.params.get("lora_r")
    if spec is None:
        return space.fixed["lora_r"] > 0
    return max(spec.get("choices") or [spec["high"]]) > 0

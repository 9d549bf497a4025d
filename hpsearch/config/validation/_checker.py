"""The checker every part of validation writes into: it collects issues (key, value, why) and turns raw values into
normalized ones, returning MISSING where a value is unusable (the issue is recorded, checking goes on)."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable

from ...errors import MISSING, Issue
from ..vocabulary import HYPERPARAMETERS


class Checker:
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
                self.add(join(key, k), value[k], f"unknown key{extra}")
        return value

    def string(self, d: dict, key: str, path: str, default: Any = MISSING, choices: Iterable[str] = ()) -> Any:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            if default is MISSING:
                self.add(join(path, key), MISSING, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(join(path, key), value, "must be a non-empty string")
            return MISSING
        choices = tuple(choices)
        if choices and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            self.add(join(path, key), value, f"must be one of {', '.join(choices)}{extra}")
            return MISSING
        return value

    def integer(self, d: dict, key: str, path: str, default: Any, low: int | None = None) -> Any:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            return default
        number = as_number(value)
        if number is None or not float(number).is_integer():
            self.add(join(path, key), value, "must be an integer")
            return MISSING
        if low is not None and number < low:
            self.add(join(path, key), value, f"must be >= {low}")
            return MISSING
        return int(number)

    def boolean(self, d: dict, key: str, path: str, default: bool) -> Any:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            return default
        if not isinstance(value, bool):
            self.add(join(path, key), value, "must be true or false")
            return MISSING
        return value

    def options(self, d: dict, key: str, path: str, target: Callable | None, reserved: Iterable[str] = ()) -> dict:
        value = d.get(key, MISSING)
        if value is MISSING or value is None:
            return {}
        if not isinstance(value, dict):
            self.add(join(path, key), value, "must be a mapping of constructor options")
            return {}
        if target is not None:
            accepted = [n for n in inspect.signature(target).parameters if n not in ("self", *reserved)]
            for name in value:
                if name not in accepted:
                    self.add(join(path, key, name), value[name],
                             f"is not an option of {target.__qualname__}; it takes {', '.join(accepted) or 'none'}")
        return dict(value)


def join(*parts: object) -> str:
    return ".".join(str(p) for p in parts if p != "")


def as_number(value: Any) -> float | int | None:
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


def hp_value(name: str, value: Any) -> tuple[Any, str | None]:
    """Normalize a hyperparameter value (numbers from strings, ints for int kinds); return (value, problem)."""
    hp = HYPERPARAMETERS[name]
    if name == "lora_target_modules" and isinstance(value, list):
        # A list in the file is stored as one comma-separated string: Optuna's categorical choices are scalars.
        if not value or not all(isinstance(v, str) and v.strip() and "," not in v for v in value):
            return value, "must be all-linear or a non-empty list of module names"
        value = ",".join(v.strip() for v in value)
    if hp.kind != "str":
        number = as_number(value)
        if number is None:
            return value, hp.check(value)
        if hp.kind == "float":
            value = float(number)
        elif float(number).is_integer():
            value = int(number)
        else:
            value = number
    return value, hp.check(value)


def did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(HYPERPARAMETERS), n=1)
    return f" (did you mean {close[0]}?)" if close else ""

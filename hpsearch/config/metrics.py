"""User metrics: ``study.metric: package.module:function``, a function of a task's predictions and references.

The function is called as ``function(predictions, references)``, plus, by name when its signature takes them
(with a default or without), ``scores`` (classification: the class probabilities, rows x classes) and
``label_names`` (classification, token classification); it returns a real number (an int, a float, a NumPy
number: a bool, a text or None fails the trial naming the function).
What predictions are depends on the task (:meth:`hpsearch.tasks.base.Task.predictions`): class indices for
classification, numbers for regression, a list of tag lists for token classification. Its direction is
``study.direction``, or the function's own ``direction`` attribute ("maximize" / "minimize") or
``greater_is_better`` (bool). Validation imports it and checks all of that before anything runs.

>>> is_user_metric("sklearn.metrics:matthews_corrcoef"), is_user_metric("accuracy")
(True, False)
"""
from __future__ import annotations

import importlib
import inspect
import math
import numbers
from typing import Any, Callable

from ..errors import HpsearchError

OPTIONAL = ("scores", "label_names")
"""Keyword arguments a user metric gets when its signature names them."""


def is_user_metric(name: Any) -> bool:
    return isinstance(name, str) and ":" in name


def load(path: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names; ValueError says why it cannot be used."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError("write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any import-time error is theirs to see, in one line
        raise ValueError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{module_name} has no {attr}")
    if not callable(fn):
        raise ValueError(f"{attr} in {module_name} is not a function")
    try:
        params = inspect.signature(fn).parameters
        inspect.signature(fn).bind([], [], **{name: None for name in OPTIONAL if name in params})
    except TypeError:
        raise ValueError(f"{attr} must take (predictions, references), and besides them only "
                         f"{' and '.join(OPTIONAL)}") from None
    except ValueError:
        pass  # a builtin without a signature: trusted
    return fn


def required_extras(fn: Callable[..., Any]) -> list[str]:
    """The optional arguments (:data:`OPTIONAL`) a metric function requires: its signature gives them no
    default."""
    try:
        params = inspect.signature(fn).parameters
    except ValueError:
        return []
    return [n for n in OPTIONAL if n in params and params[n].default is inspect.Parameter.empty
            and params[n].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def declared_direction(fn: Callable[..., Any]) -> str | None:
    """The direction a metric function declares (``direction`` or ``greater_is_better``), if any."""
    direction = getattr(fn, "direction", None)
    if direction in ("maximize", "minimize"):
        return direction
    greater = getattr(fn, "greater_is_better", None)
    if isinstance(greater, bool):
        return "maximize" if greater else "minimize"
    return None


class MetricFailed(HpsearchError):
    """A metric could not score an evaluation (a metric function raised or returned no finite number, a built-in
    metric is undefined on it): the trial fails with this as its ``fail_reason``, and the study goes on."""


def compute(path: str, fn: Callable[..., Any], given: dict[str, Any]) -> float:
    """``fn`` on the task's ``given`` predictions (``predictions``, ``references`` and the optional ones its
    signature names), as a finite float; a failure is a MetricFailed naming the function and what went wrong (the
    exception's last line)."""
    try:
        names = set(inspect.signature(fn).parameters)
    except ValueError:
        names = set()
    kwargs = {k: given[k] for k in OPTIONAL if k in names and k in given}
    try:
        value = fn(given["predictions"], given["references"], **kwargs)
    except Exception as exc:  # the user's function: its error, in one line, is the trial's fail reason
        last = (str(exc).strip().splitlines() or [""])[-1]
        raise MetricFailed(f"study.metric {path} raised {type(exc).__name__}{': ' + last if last else ''}") from None
    number = real(value)
    if number is None:
        raise MetricFailed(f"study.metric {path} returned {str(value)[:80]!r} ({type(value).__name__}), not a "
                           f"number")
    if not math.isfinite(number):
        raise MetricFailed(f"study.metric {path} returned {number}")
    return number


def real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (a Python or NumPy int or float, or a one-element array of
    them); None for anything else, a bool or a text that looks like a number included: nothing is coerced.

    >>> real(0.5), real(3), real(True), real("0.5"), real(None)
    (0.5, 3.0, None, None, None)
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d NumPy array or tensor
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy's bool is no Real either
        return None
    return float(value)

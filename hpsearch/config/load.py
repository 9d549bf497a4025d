"""A validated space from what a user holds: a space file, a mapping in the file's form, or a Space; with
``--set`` overrides given as strings or as a mapping. The one entry point that the CLI and the API share."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .files import apply_overrides, read_yaml
from .space import Space
from .validation import validate

Overrides = Mapping[str, Any] | Iterable[str] | None
"""``{"fixed.epochs": 1}`` (None removes a key) or ``["fixed.epochs=1"]``, as ``--set`` takes them."""


def override_strings(overrides: Overrides) -> list[str]:
    """``{"fixed.epochs": 1}`` or ``["fixed.epochs=1"]`` as ``--set`` strings (JSON values are YAML too).

    >>> override_strings({"fixed.epochs": 1, "params.dropout": None, "study.name": "a b"})
    ['fixed.epochs=1', 'params.dropout=null', 'study.name="a b"']
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise UsageError(f"overrides: give a mapping or a list of KEY=VALUE strings, not the string {overrides!r}")
    return list(overrides)


def load_space(space: str | Path | Mapping[str, Any] | Space, overrides: Overrides = None) -> Space:
    """A validated :class:`~hpsearch.config.space.Space` from a space file, a mapping in the file's form, or a
    Space (re-validated with ``overrides``). Every problem is reported at once, as a ConfigError.

    >>> space = load_space("search_spaces/lr_dropout.yaml", {"fixed.epochs": 2})   # doctest: +SKIP
    >>> space.fixed["epochs"]                                                        # doctest: +SKIP
    2
    """
    sets = override_strings(overrides)
    if isinstance(space, (str, Path)):
        raw = apply_overrides(read_yaml(space), sets, source=str(space))
        return validate(raw, source=str(space), default_name=Path(space).stem)
    if isinstance(space, Space):
        if not sets:
            return space
        source, raw = space.source, space.to_dict()
    elif isinstance(space, Mapping):
        source, raw = "<mapping>", dict(space)
    else:
        raise UsageError(f"space: expected a file path, a mapping or a Space, got {type(space).__name__}")
    return validate(apply_overrides(raw, sets, source=source), source=source)

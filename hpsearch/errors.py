"""Errors that reach the user: each names the file, the key and the value, and says what to do."""
from __future__ import annotations

from dataclasses import dataclass


class HpsearchError(Exception):
    """A failure the user can act on; the CLI prints it on one screen without a traceback (exit 1)."""

    exit_code = 1


class UsageError(HpsearchError):
    """Bad input on the command line or a refused operation (exit 2)."""

    exit_code = 2


class DataError(UsageError):
    """A problem in a data file or dataset: names the split and file, the row (counted from 1, after any header)
    and the value (exit 2, before anything is written)."""


@dataclass(frozen=True)
class Issue:
    """One problem in a config: where (dotted key path), what was found, and why it is wrong."""

    key: str
    value: object
    message: str

    def __str__(self) -> str:
        shown = _short(self.value)
        return f"{self.key or '<top level>'}: {self.message}" + (f" (got {shown})" if shown else "")


def _short(value: object) -> str:
    if value is MISSING:
        return ""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: object = _Missing()
"""Sentinel for an Issue about an absent key: nothing is shown as the value."""


class ConfigError(UsageError):
    """Every problem found in one config file at once (exit 2)."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.issues)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  - {issue}" for issue in self.issues])

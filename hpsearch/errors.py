"""Errors that reach the user: each names the file, the key and the value, and says what to do."""
from __future__ import annotations

from dataclasses import dataclass


class HpsearchError(Exception):
    """A failure the user can act on; the CLI prints it on one screen without a traceback (exit 1)."""

    exit_code = 1


INTERRUPTED = "interrupted: the running trial was marked FAIL; run the same command to resume"


def exit_status(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and the line a command ends with for ``exc``: an HpsearchError's own code and message, 130 /
    143 for an interrupt (SIGINT / SIGTERM, which carries ``exit_code``); None for anything else (a bug: its
    traceback is wanted)."""
    if isinstance(exc, HpsearchError):
        return exc.exit_code, f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return getattr(exc, "exit_code", 130), INTERRUPTED
    return None


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

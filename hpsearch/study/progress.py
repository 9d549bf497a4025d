"""What a person sees while a study runs: a live rich view, or plain log lines with ``--quiet``.

Everything goes to stderr; stdout is kept for results. Both views share one interface, so the objective
and runner do not care which one is on.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from . import record


def fmt_params(params: dict[str, Any]) -> str:
    """Compact ``name=value`` list with floats to 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def fmt_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class Progress:
    """The no-op view (used by tests and as the base of the two real ones). Every number it is given is a host
    number: the live view is drawn from another thread, which must never read a device tensor (a sync, and on a
    GPU a call from outside a CUDA graph's capture that breaks it)."""

    def study_started(self, study: Any, n_trials: int, metric: str) -> None:
        """Before the first trial of this invocation."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        """Parameters were sampled for trial ``number``."""

    def trial_step(self, number: int, step: int, total: int) -> None:
        """Trial ``number`` finished optimizer step ``step`` of ``total``."""

    def trial_evaluated(self, number: int, loss: float, metrics: dict[str, float]) -> None:
        """An intermediate or final evaluation of trial ``number`` finished; ``loss``: its last training loss."""

    def __call__(self, study: Any, trial: Any) -> None:
        """Optuna's per-trial callback: a trial ended (any state)."""

    def close(self) -> None:
        """The study run ended or was interrupted."""


def _best(study: Any) -> tuple[float | None, int | None]:
    """The best value so far and its trial; with several objectives, the Pareto front's best first objective."""
    ranked = record.ranked_trials(study)
    return (record.value(ranked[0]), ranked[0].number) if ranked else (None, None)


class LogProgress(Progress):
    """``--quiet``: one plain line per trial start and end, on stderr."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr

    def _log(self, text: str) -> None:
        print(f"[hpsearch {time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def study_started(self, study: Any, n_trials: int, metric: str) -> None:
        directions = ", ".join(d.name.lower() for d in study.directions)
        self._log(f"study {study.study_name}: running {n_trials} trial(s), {directions} {metric}")

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self._log(f"trial {number} started: {fmt_params(params)}")

    def __call__(self, study: Any, trial: Any) -> None:
        value, number = _best(study)
        took = trial.duration.total_seconds() if trial.duration else 0.0
        extra = trial.user_attrs.get(record.FAIL_REASON) or ""
        shown = fmt_value(trial.values[0]) if trial.values and len(trial.values) == 1 else (
            "(" + ", ".join(fmt_value(v) for v in trial.values) + ")" if trial.values else fmt_value(None))
        self._log(f"trial {trial.number} {trial.state.name}: value={shown} in {took:.1f}s; "
                  f"best={fmt_value(value)} (trial {number}) {extra}".rstrip())


class LiveProgress(Progress):
    """A live table of the trials run here, the best so far, elapsed time, and the progress of each running trial
    (several at once in a fused group)."""

    def __init__(self, console: Console | None = None, rows: int = 12) -> None:
        self.console = console or Console(stderr=True)
        self.rows = rows
        self.finished: list[Any] = []
        self.study: Any = None
        self.metric = ""
        self.n_trials = 0
        self.started = time.monotonic()
        self.running: dict[int, dict[str, Any]] = {}
        """Each running trial's progress, by number: host numbers only (the refresh thread reads them)."""
        self.best: tuple[float | None, int | None] = (None, None)
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)

    def study_started(self, study: Any, n_trials: int, metric: str) -> None:
        self.study, self.n_trials, self.metric = study, n_trials, metric
        self.best = _best(study)  # read here and on each finished trial, never from the refresh thread
        self.started = time.monotonic()
        self.live.start()

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.running[number] = {"params": params, "step": 0, "total": 1, "loss": None, "last": None,
                                "t0": time.monotonic()}

    def trial_step(self, number: int, step: int, total: int) -> None:
        if number in self.running:
            self.running[number].update(step=step, total=total)

    def trial_evaluated(self, number: int, loss: float, metrics: dict[str, float]) -> None:
        if number in self.running:
            self.running[number].update(loss=loss, last=metrics.get(self.metric))

    def __call__(self, study: Any, trial: Any) -> None:
        self.finished.append(trial)
        self.best = _best(study)
        self.running.pop(trial.number, None)

    def close(self) -> None:
        self.live.stop()

    def __rich__(self) -> Group:
        value, number = self.best
        elapsed = time.monotonic() - self.started
        name = self.study.study_name if self.study is not None else ""
        head = Text.assemble(("hpsearch ", "bold"), (name, "cyan"),
                             f"  trials {len(self.finished)}/{self.n_trials}  best {self.metric} ",
                             (fmt_value(value), "bold green"), f" (trial {number})" if number is not None else "",
                             f"  elapsed {elapsed:,.0f}s")
        table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
        for col in ("#", "state", self.metric or "value", "time", "params"):
            table.add_column(col, no_wrap=col != "params")
        style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}
        for t in self.finished[-self.rows:]:
            took = t.duration.total_seconds() if t.duration else 0.0
            table.add_row(str(t.number), Text(t.state.name, style=style.get(t.state.name, "")),
                          fmt_value(record.shown_value(t, self.metric)),
                          f"{took:.1f}s", fmt_params(t.params))
        parts: list[Any] = [head, table]
        for n, c in sorted(self.running.items()):  # a copy: trials start and end meanwhile
            line = Text.assemble(f"trial {n} ", ("running", "blue"), f"  step {c['step']}/{c['total']}",
                                 f"  loss {c['loss']:.4f}" if c["loss"] is not None else "",
                                 f"  last {self.metric} {fmt_value(c['last'])}",
                                 f"  {time.monotonic() - c['t0']:.0f}s  {fmt_params(c['params'])}")
            parts += [line, ProgressBar(total=max(c["total"], 1), completed=c["step"], width=60)]
        return Group(*parts)


def make_progress(quiet: bool) -> Progress:
    """The live view on a terminal, log lines with --quiet or when stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return LogProgress()
    return LiveProgress()

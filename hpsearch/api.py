"""The Python API: what the CLI's commands do, as functions for notebooks and pipelines.

``hpsearch.run`` returns the ``optuna.Study``; ``load_space``, ``export`` and ``train`` mirror ``validate``,
``export`` and ``train``. The CLI parses its flags and calls these same functions. Errors are
:class:`~hpsearch.errors.HpsearchError` (``UsageError`` / ``ConfigError`` for bad input, nothing written).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config.load import Overrides, load_space
from .config.options import DEVICE, RunOptions, run_keywords, shown
from .config.space import Space
from .errors import ConfigError, UsageError

if TYPE_CHECKING:
    import optuna

__all__ = ["RunOptions", "Space", "export", "load_space", "repair", "run", "train"]


def run(space: str | Path | Mapping[str, Any] | Space, *, overrides: Overrides = None,
        **options: Any) -> optuna.Study | None:
    """Run ``trials`` more trials (or until the study has ``total`` finished ones) and return the study.

    ``space`` is a file, a mapping in the file's form, or a Space; ``overrides`` changes keys before validation
    (``{"fixed.epochs": 1}``; None removes a key). The other keyword arguments are ``hpsearch run``'s options
    (:class:`~hpsearch.config.options.RunOptions`: ``trials``, ``total``, ``storage``, ``study_name``, ``device``,
    ``workers``, ``keep_best``, ``mlflow``, ...). Every rule of the run (:mod:`hpsearch.config.rules`: the options
    together, with the space and with this machine) is checked before anything is written, every problem at once.
    ``storage`` defaults to ``$HPSEARCH_STORAGE``, else ``sqlite:///studies.db``; ``workers`` > 1, ``gpus``,
    ``trials_per_gpu``, ``gpus_per_trial`` or ``ray`` start worker processes sharing one budget, placed by
    :func:`hpsearch.config.placement.place`; ``quiet=False`` shows the live view; ``mlflow`` is a tracking URI ("":
    $MLFLOW_TRACKING_URI).
    """
    from .study.launch import start
    from .study.storage import resolve_url

    opts, validated = _options_and_space(options, space, overrides)
    return start(validated, replace(opts, storage=resolve_url(opts.storage),
                                    study_name=opts.study_name or validated.name))


def _options_and_space(options: dict[str, Any], space: Any, overrides: Overrides) -> tuple[RunOptions, Space]:
    """The run's options and its validated space; when either is refused, every problem found at once: each bad
    option, each problem of the space, and how the options go together (the rules that need no space)."""
    from .config.rules import Problem, RunRefused, option_combination_problems

    opts = validated = None
    refusals: list[tuple[UsageError, list[str]]] = []
    try:
        opts = run_keywords(options)
    except UsageError as exc:
        refusals.append((exc, getattr(exc, "problems", None) or [str(exc)]))
    try:
        validated = load_space(space, overrides)
    except ConfigError as exc:
        refusals.append((exc, [f"{exc.source}: {issue}" for issue in exc.issues]))
    except UsageError as exc:
        refusals.append((exc, [str(exc)]))
    if not refusals:
        return opts, validated
    together = [p.text for p in option_combination_problems(opts)] if opts is not None else []
    if len(refusals) == 1 and not together:
        raise refusals[0][0]
    problems = [text for _, texts in refusals for text in texts] + together
    raise RunRefused([Problem(text) for text in problems])


def _signature() -> inspect.Signature:
    """``run``'s signature as ``help()`` and editors show it: the space, overrides, then every RunOptions field."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("space", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("overrides", kw, default=None)]
    defaults = RunOptions.__dataclass_fields__
    params += [inspect.Parameter(name, kw, default=defaults[name].default) for name, _ in RunOptions.fields()]
    return inspect.Signature(params)


run.__signature__ = _signature()  # type: ignore[attr-defined]


def export(study: str, output: str | Path, *, storage: str | None = None, top: int = 1,
           model: str | Path | None = None, artifacts: str | None = None, pareto: bool = False) -> list[Path]:
    """Write the best (or ``top`` best, or with ``pareto`` every Pareto-front) trial configs of ``study`` and, with
    ``model``, their kept weights; return the paths written (``hpsearch export``)."""
    from .outputs.export import export as export_study
    from .study.storage import resolve_url

    return export_study(resolve_url(storage), study, output, top=top, model=model, artifacts=artifacts,
                        pareto=pareto)


def repair(storage: str | None = None) -> str:
    """Set aside the unreadable lines of a journal file's study storage (``hpsearch repair``); return what was done.
    A torn last line needs no repair: the next append sets it aside itself."""
    from .study.storage import repair_storage, resolve_url

    return repair_storage(resolve_url(storage))


def train(config: str | Path | Mapping[str, Any] | Space, output_dir: str | Path, *, overrides: Overrides = None,
          device: str = "auto", adapter_only: bool = False, progress: Any = None) -> dict[str, Any]:
    """Fine-tune one model from a config with nothing left to search (``hpsearch export`` writes one) into
    ``output_dir``, which ``from_pretrained`` then loads; return what metrics.json holds (``hpsearch train``)."""
    from .config.rules import decide_train
    from .outputs.retrain import retrain
    from .study.machine import probe

    why = DEVICE.problem(device)
    if why:
        raise UsageError(f"{shown('device')}: {why}, got {device!r}")
    space = load_space(config, overrides)
    with probe(None, device) as machine:
        decide_train(space, device, adapter_only, machine)
    return retrain(space, output_dir, device=device, progress=progress, adapter_only=adapter_only)

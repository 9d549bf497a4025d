"""The Python API: what the CLI's commands do, as functions for notebooks and pipelines.

``hpsearch.run`` returns the ``optuna.Study``; ``load_space``, ``export`` and ``train`` mirror ``validate``,
``export`` and ``train``. The CLI parses its flags and calls these same functions. Errors are
:class:`~hpsearch.errors.HpsearchError` (``UsageError`` / ``ConfigError`` for bad input, nothing written).
"""
from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import optuna

    from .space import Space


def _override_strings(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """``{"fixed.epochs": 1}`` or ``["fixed.epochs=1"]`` as ``--set`` strings (JSON values are YAML too)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise UsageError(f"overrides: give a mapping or a list of KEY=VALUE strings, not the string {overrides!r}")
    return list(overrides)


def load_space(space: str | Path | Mapping[str, Any] | Space,
               overrides: Mapping[str, Any] | Iterable[str] | None = None) -> Space:
    """A validated :class:`~hpsearch.space.Space` from a space file, a mapping in the file's form, or a Space
    (re-validated with ``overrides``). Every problem is reported at once, as a ConfigError."""
    from .space import Space, load_space as load_file
    from .spacefile import apply_overrides
    from .validation import validate

    sets = _override_strings(overrides)
    if isinstance(space, (str, Path)):
        return load_file(space, sets)
    if isinstance(space, Space):
        if not sets:
            return space
        source, raw = space.source, space.to_dict()
    elif isinstance(space, Mapping):
        source, raw = "<mapping>", dict(space)
    else:
        raise UsageError(f"space: expected a file path, a mapping or a Space, got {type(space).__name__}")
    return validate(apply_overrides(raw, sets, source=source), source=source)


def run(space: str | Path | Mapping[str, Any] | Space, *, trials: int | None = None, total: int | None = None,
        storage: str | None = None, study_name: str | None = None,
        overrides: Mapping[str, Any] | Iterable[str] | None = None, device: str = "auto",
        workers: int | None = None, gpus: Iterable[str] | None = None, timeout: float | None = None,
        heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int | None = None,
        keep_best: int | None = None, artifacts: str | None = None, warm_start: str | None = None,
        mlflow: str | None = None, quiet: bool = True) -> optuna.Study:
    """Run ``trials`` more trials (or until the study has ``total`` finished ones) and return the study.

    ``storage`` is the study database's URL (default ``$HPSEARCH_STORAGE``, else ``sqlite:///studies.db``);
    ``workers`` > 1 (or ``gpus``) starts that many local worker processes sharing one budget. ``quiet=False``
    shows the live view. ``mlflow`` is a tracking URI ("" means $MLFLOW_TRACKING_URI): every trial becomes an
    MLflow run. See ``hpsearch run --help`` for the other arguments: they are its flags.
    """
    from .storage import resolve_url

    if trials is None and total is None:
        raise UsageError("give trials=N (trials in this invocation) or total=N (finished trials in the study)")
    for name, value in (("trials", trials), ("total", total), ("workers", workers), ("keep_best", keep_best)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{name}: must be an integer >= 1, got {value!r}")
    if grace_period and heartbeat_interval and grace_period <= heartbeat_interval:
        raise UsageError(f"grace_period {grace_period}: must be longer than heartbeat_interval {heartbeat_interval}")
    gpu_list = [str(g).strip() for g in gpus if str(g).strip()] if gpus else None
    if gpu_list and workers and workers != len(gpu_list):
        raise UsageError(f"workers {workers}: one worker per GPU, and {len(gpu_list)} GPUs were given")
    if mlflow is not None:
        from .tracking import tracking_uri

        mlflow = tracking_uri(mlflow)
    validated = load_space(space, overrides)
    url = resolve_url(storage)
    name = study_name or validated.name
    count = len(gpu_list) if gpu_list else workers or 1
    if count > 1:
        return _run_workers(space, validated, overrides, url, name, device, count, gpu_list, trials, total,
                            timeout, heartbeat_interval, grace_period, max_retry, keep_best, artifacts,
                            warm_start, mlflow)
    from .runner import run_study

    return run_study(validated, storage_url=url, n_trials=trials, study_name=name, device=device, quiet=quiet,
                     timeout=timeout, total=total, heartbeat_interval=heartbeat_interval,
                     grace_period=grace_period, max_retry=max_retry, keep_best=keep_best, artifacts=artifacts,
                     warm_start=warm_start, mlflow=mlflow)


def _run_workers(space: Any, validated: Space, overrides: Any, url: str, name: str, device: str, count: int,
                 gpus: list[str] | None, trials: int | None, total: int | None, timeout: float | None,
                 heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None,
                 keep_best: int | None, artifacts: str | None, warm_start: str | None,
                 mlflow: str | None) -> optuna.Study:
    """Prepare once here (data cache, study, warm start), then start the workers with one shared budget.

    Workers read a space file: the given one with its overrides, or the validated space written to a
    temporary file (a mapping or Space from Python)."""
    import os

    from .runner import FINISHED, open_study, prepare_run
    from .spacefile import dump_yaml
    from .storage import open_storage, redact
    from .workers import check_storage_for_workers, launch

    check_storage_for_workers(url, count)
    prepare_run(validated, "cpu" if device == "auto" else device, weights=False)  # fills the tokenized-data cache
    study = open_study(open_storage(url, heartbeat_interval=None), name, validated, warm_start=warm_start)
    if total is None:
        total = len(study.get_trials(deepcopy=False, states=FINISHED)) + (trials or 0)
    with tempfile.TemporaryDirectory(prefix="hpsearch-space-") as tmp:
        if isinstance(space, (str, Path)):
            args = ["--space", str(space)] + [a for o in _override_strings(overrides) for a in ("--set", o)]
        else:
            file = Path(tmp) / f"{validated.name}.yaml"
            file.write_text(dump_yaml(validated.to_dict()), encoding="utf-8")
            args = ["--space", str(file)]
        args += ["--study-name", name, "--device", device]
        for flag, value in (("--timeout", timeout), ("--heartbeat-interval", heartbeat_interval),
                            ("--grace-period", grace_period), ("--max-retry", max_retry),
                            ("--keep-best", keep_best), ("--artifacts", artifacts), ("--mlflow", mlflow)):
            if value is not None:
                args += [flag, str(value)]
        os.environ["HPSEARCH_STORAGE"] = url  # passed by environment: a password never shows in a process list
        print(f"[hpsearch] {count} workers on study {name} in {redact(url)}, until {total} finished trials",
              file=sys.stderr, flush=True)
        code = launch(args, count, gpus, total)
    if code:
        from .errors import HpsearchError

        error = HpsearchError(f"{count} workers on study {name}: a worker exited with status {code}")
        error.exit_code = code  # the CLI exits with the worker's status (130 when interrupted)
        raise error
    return study


def export(study: str, output: str | Path, *, storage: str | None = None, top: int = 1,
           model: str | Path | None = None, artifacts: str | None = None) -> list[Path]:
    """Write the best (or ``top`` best) trial configs of ``study`` and, with ``model``, their kept weights; return
    the paths written (``hpsearch export``)."""
    from .exporter import export as export_study
    from .storage import resolve_url

    return export_study(resolve_url(storage), study, output, top=top, model=model, artifacts=artifacts)


def train(config: str | Path | Mapping[str, Any] | Space, output_dir: str | Path, *,
          overrides: Mapping[str, Any] | Iterable[str] | None = None, device: str = "auto",
          adapter_only: bool = False, progress: Any = None) -> dict[str, Any]:
    """Fine-tune one model from a config with nothing left to search (``hpsearch export`` writes one) into
    ``output_dir``, which ``from_pretrained`` then loads; return what metrics.json holds (``hpsearch train``)."""
    from .retrain import retrain

    return retrain(load_space(config, overrides), output_dir, device=device, progress=progress,
                   adapter_only=adapter_only)

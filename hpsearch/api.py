"""The Python API: what the CLI's commands do, as functions for notebooks and pipelines.

``hpsearch.run`` returns the ``optuna.Study``; ``load_space``, ``export`` and ``train`` mirror ``validate``,
``export`` and ``train``. The CLI parses its flags and calls these same functions. Errors are
:class:`~hpsearch.errors.HpsearchError` (``UsageError`` / ``ConfigError`` for bad input, nothing written).
"""
from __future__ import annotations

import inspect
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config.load import Overrides, load_space, override_strings
from .config.options import DEVICE, RunOptions, run_keywords
from .config.space import Space
from .errors import HpsearchError, UsageError

if TYPE_CHECKING:
    import optuna

__all__ = ["RunOptions", "Space", "export", "load_space", "run", "train"]


def run(space: str | Path | Mapping[str, Any] | Space, *, overrides: Overrides = None,
        **options: Any) -> optuna.Study | None:
    """Run ``trials`` more trials (or until the study has ``total`` finished ones) and return the study.

    ``space`` is a file, a mapping in the file's form, or a Space; ``overrides`` changes keys before validation
    (``{"fixed.epochs": 1}``; None removes a key). The other keyword arguments are ``hpsearch run``'s options
    (:class:`~hpsearch.config.options.RunOptions`: ``trials``, ``total``, ``storage``, ``study_name``, ``device``,
    ``workers``, ``keep_best``, ``mlflow``, ...), checked before anything is written. ``storage`` defaults to
    ``$HPSEARCH_STORAGE``, else ``sqlite:///studies.db``; ``workers`` > 1, ``gpus`` or ``trials_per_gpu`` start
    local worker processes sharing one budget, placed on the GPUs by :func:`hpsearch.study.workers.place`;
    ``quiet=False`` shows the live view; ``mlflow`` is a tracking URI ("" means $MLFLOW_TRACKING_URI).
    """
    from .study.storage import resolve_url

    opts = run_keywords(options)
    if opts.mlflow is not None:
        from .study.tracking import tracking_uri

        opts = replace(opts, mlflow=tracking_uri(opts.mlflow))
    if opts.wandb is not None:
        from .study.wandb_tracking import wandb_project

        opts = replace(opts, wandb=wandb_project(opts.wandb))
    validated = load_space(space, overrides)
    opts = replace(opts, storage=resolve_url(opts.storage), study_name=opts.study_name or validated.name)
    if opts.local_workers:
        return _run_workers(space, validated, overrides, opts)
    from .study.runner import run_study

    return run_study(validated, opts)


def _signature() -> inspect.Signature:
    """``run``'s signature as ``help()`` and editors show it: the space, overrides, then every RunOptions field."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("space", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("overrides", kw, default=None)]
    defaults = RunOptions.__dataclass_fields__
    params += [inspect.Parameter(name, kw, default=defaults[name].default) for name, _ in RunOptions.fields()]
    return inspect.Signature(params)


run.__signature__ = _signature()  # type: ignore[attr-defined]


def _run_workers(space: Any, validated: Space, overrides: Overrides, opts: RunOptions) -> optuna.Study:
    """Prepare once here (data cache, study, warm start), then start the workers with one shared budget.

    Workers read a space file: the given one with its overrides, or the validated space written to a
    temporary file (a mapping or Space from Python)."""
    from .config.files import dump_yaml
    from .finetune.recipe import tokenize
    from .study.runner import FINISHED, open_study
    from .study.storage import open_storage, redact
    from .study.workers import check_storage_for_workers, launch, place, place_groups, visible_gpus

    url, name = opts.storage, opts.study_name
    if opts.ray is not None:
        gpus: list[str] = []
    else:
        gpus = list(opts.gpus or visible_gpus(opts.device))
    if opts.trials_per_gpu and not gpus:
        raise UsageError(f"--trials-per-gpu {opts.trials_per_gpu}: no GPU is visible (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); give --workers N to split the CPU")
    if opts.ray is not None:
        slots = place(opts.workers or 1, [])  # Ray places them
    elif opts.gpus_per_trial:
        slots = place_groups(opts.workers, [] if opts.device == "cpu" else gpus, opts.gpus_per_trial)
    else:
        slots = place(opts.workers, gpus, opts.trials_per_gpu, threads=opts.cpus_per_worker)
    count = len(slots)
    check_storage_for_workers(url, count)
    tokenize(validated)  # fills the data cache before the workers start
    study = open_study(open_storage(url, heartbeat_interval=None), name, validated, warm_start=opts.warm_start)
    total = opts.total
    if total is None:
        total = len(study.get_trials(deepcopy=False, states=FINISHED)) + (opts.trials or 0)
    with tempfile.TemporaryDirectory(prefix="hpsearch-space-") as tmp:
        if isinstance(space, (str, Path)):
            args = ["--space", str(Path(space).resolve())]
            args += [a for o in override_strings(overrides) for a in ("--set", o)]
        else:
            file = Path(tmp) / f"{validated.name}.yaml"
            file.write_text(dump_yaml(validated.to_dict()), encoding="utf-8")
            args = ["--space", str(file)]
        args += ["--study-name", name, *opts.worker_args()]
        print(f"[hpsearch] {count} workers on study {name} in {redact(url)}, until {total} finished trials",
              file=sys.stderr, flush=True)
        if opts.ray is not None:
            from .study.raylaunch import launch_on_ray

            code = launch_on_ray(opts.ray, args, count, total, {"HPSEARCH_STORAGE": url}, device=opts.device,
                                 trials_per_gpu=opts.trials_per_gpu, gpus_per_trial=opts.gpus_per_trial,
                                 cpus=opts.cpus_per_worker)
        else:
            code = launch(args, slots, total, env={"HPSEARCH_STORAGE": url})
    if code:
        error = HpsearchError(f"{count} workers on study {name}: a worker exited with status {code}")
        error.exit_code = code  # the CLI exits with the worker's status (130 when interrupted)
        raise error
    return study


def export(study: str, output: str | Path, *, storage: str | None = None, top: int = 1,
           model: str | Path | None = None, artifacts: str | None = None, pareto: bool = False) -> list[Path]:
    """Write the best (or ``top`` best, or with ``pareto`` every Pareto-front) trial configs of ``study`` and, with
    ``model``, their kept weights; return the paths written (``hpsearch export``)."""
    from .outputs.export import export as export_study
    from .study.storage import resolve_url

    return export_study(resolve_url(storage), study, output, top=top, model=model, artifacts=artifacts,
                        pareto=pareto)


def train(config: str | Path | Mapping[str, Any] | Space, output_dir: str | Path, *, overrides: Overrides = None,
          device: str = "auto", adapter_only: bool = False, progress: Any = None) -> dict[str, Any]:
    """Fine-tune one model from a config with nothing left to search (``hpsearch export`` writes one) into
    ``output_dir``, which ``from_pretrained`` then loads; return what metrics.json holds (``hpsearch train``)."""
    from .outputs.retrain import retrain

    why = DEVICE.problem(device)
    if why:
        raise UsageError(f"device: {why}, got {device!r}")
    return retrain(load_space(config, overrides), output_dir, device=device, progress=progress,
                   adapter_only=adapter_only)

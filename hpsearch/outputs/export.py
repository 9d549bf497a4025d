"""Export: a study's best trial (or top K) as a config file in the space schema, with nothing left to search."""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

import optuna

from ..config.files import dump_yaml
from ..config.space import Space
from ..errors import UsageError
from ..study import record
from ..study.storage import load_study, redact


def trial_space(study: optuna.Study, trial: optuna.trial.FrozenTrial, storage_url: str) -> Space:
    """The full config a trial ran with, every hyperparameter fixed, and a reference back to it."""
    config = record.trial_config(study, trial)
    confirmed = record.confirmation(study, trial.number)  # study.confirm's fold values and score, when it ran
    origin = {"study": study.study_name, "trial": trial.number, "value": record.value(trial),
              **({"values": dict(zip(record.objectives(study), trial.values))} if record.is_multi(study) else {}),
              "metric": config["study"]["metric"], "storage": redact(storage_url),
              **({"confirmed": confirmed} if confirmed else {}),
              "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return Space(config).with_params(trial.params, origin=origin)


def score_kept_model(study: optuna.Study, trial: optuna.trial.FrozenTrial, space: Space, directory: Path,
                     device: str = "auto") -> dict[str, float] | None:
    """Score an exported model on ``data.test`` once (None without one): the metrics go into its metrics.json and
    onto the study (:data:`hpsearch.study.record.TEST_SCORES`, which the report shows); nothing chooses by them."""
    if space.data.test is None:
        return None
    import transformers

    from ..finetune.modeldir import METRICS_FILE
    from ..finetune.recipe import prepare, score_test

    prepared = prepare(space, device, weights=False)
    cls = getattr(transformers, space.task.auto_class)
    model = cls.from_pretrained(directory).to(prepared.device)
    test = score_test(space, model, prepared)
    file = directory / METRICS_FILE
    stored = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    file.write_text(json.dumps({**stored, "test_metrics": test}, indent=2, default=str) + "\n", encoding="utf-8")
    scores = {str(k): v for k, v in record.test_scores(study).items()}
    study.set_user_attr(record.TEST_SCORES, {**scores, str(trial.number): test})
    return test


def render(space: Space, path: Path) -> str:
    """YAML (with the command that uses it on top) or JSON, chosen by the output file's extension."""
    config = space.to_dict()
    if path.suffix.lower() == ".json":
        return json.dumps(config, indent=2) + "\n"
    o = config["origin"]
    header = (f"hpsearch train --config {path} --output-dir best-model/\n"
              f"Trial {o['trial']} of study {o['study']} ({o['metric']}={o['value']:.4f}), exported {o['exported']}.")
    return dump_yaml(config, header)


def export(storage_url: str, study_name: str, output: str | Path, top: int = 1, model: str | Path | None = None,
           artifacts: str | None = None, pareto: bool = False) -> list[Path]:
    """Write the best (or top ``top``) trial configs; K > 1 writes NAME-1.yaml ... NAME-K.yaml.

    ``model``: also unpack each trial's kept weights (``run --keep-best``) into a directory that
    ``from_pretrained`` loads (K > 1: MODEL-1 ... MODEL-K), from the study's artifact store or ``artifacts``.
    Everything is checked before anything is written: a trial without kept weights writes no file.
    """
    from ..finetune.modeldir import CONFIG_FILE, check_new_dir
    from ..study.artifacts import download_model

    out = Path(output)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UsageError(f"--output {output}: use a .yaml, .yml or .json file name")
    study = load_study(storage_url, study_name)
    if pareto and not record.is_multi(study):
        raise UsageError(f"--pareto: study {study_name!r} has one objective; its best is --top 1")
    if pareto and model is not None:
        raise UsageError("--pareto with --model: a multi-objective study keeps no models; retrain the config you pick")
    trials = record.ranked_trials(study) if pareto else record.best_trials(study, top)
    if pareto and not trials:
        raise UsageError(f"study {study_name!r} has no completed trial yet; run more trials first")
    top = len(trials) if pareto and len(trials) > 1 else top
    paths = [out] if top == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, len(trials) + 1)]
    dirs: list[Path] = []
    if model is not None:
        base = check_new_dir(model, "--model")
        dirs = [base] if top == 1 else [check_new_dir(f"{base}-{i}", "--model") for i in range(1, len(trials) + 1)]
        try:  # all unpacked first: a missing model leaves nothing behind
            for trial, directory in zip(trials, dirs):
                download_model(study, trial, artifacts, directory)
            for trial, directory in zip(trials, dirs):
                score_kept_model(study, trial, trial_space(study, trial, storage_url), directory)
        except Exception:
            for directory in dirs:
                shutil.rmtree(directory, ignore_errors=True)
            raise
    for i, (path, trial) in enumerate(zip(paths, trials)):
        text = render(trial_space(study, trial, storage_url), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if dirs:
            (dirs[i] / CONFIG_FILE).write_text(render(trial_space(study, trial, storage_url), Path(CONFIG_FILE)),
                                                encoding="utf-8")
    return paths + dirs


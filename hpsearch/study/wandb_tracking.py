"""W&B tracking (``--wandb [PROJECT]``): every trial of a study as a W&B run, grouped by the study, as
:mod:`hpsearch.study.tracking` does for MLflow.

Each run gets: every hyperparameter (searched and fixed) as its config, each intermediate report as the study
metric at its step, the numeric user attributes (``val_*`` metrics, times, throughput, memory) and the trial's
value in its summary, the other attributes (status, fail reason) in the summary as text, and the trial's state as
a tag (complete / pruned / fail) and as the run's exit (a FAIL trial's run ends failed). The project is PROJECT,
else $WANDB_PROJECT, else the study's name; WANDB_MODE=offline keeps the runs on disk for ``wandb sync``.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import HpsearchError
from . import record


class WandbLogger:
    """A study callback that logs each finished trial as a W&B run."""

    def __init__(self, project: str, metric: str, module: Any = None) -> None:
        if module is None:
            try:
                import wandb as module
            except ImportError:
                raise HpsearchError("--wandb needs wandb: pip install 'hpsearch[wandb]'") from None
        self.wandb = module
        self.project = project
        self.metric = metric

    def __call__(self, study: Any, trial: Any) -> None:
        state = trial.state.name
        attrs = trial.user_attrs
        hp = attrs.get(record.HYPERPARAMETERS) or trial.params
        run = self.wandb.init(project=self.project or study.study_name, group=study.study_name,
                              name=f"trial-{trial.number}", job_type="trial", config=dict(hp),
                              tags=[state.lower()])
        try:
            for step, value in sorted(trial.intermediate_values.items()):
                run.log({self.metric: float(value)}, step=int(step))
            for key, value in attrs.items():
                if key == record.HYPERPARAMETERS:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    run.summary[key] = value
                else:
                    run.summary[key] = value if isinstance(value, str) else json.dumps(value)
            for name, v in zip(record.objectives(study), trial.values or []):
                run.summary["trial_value" if len(trial.values) == 1 else f"objective_{name}"] = float(v)
            run.summary["optuna_state"] = state
            run.summary["optuna_trial_number"] = trial.number
        finally:
            run.finish(exit_code=1 if state == "FAIL" else 0)

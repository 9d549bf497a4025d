"""MLflow tracking: every trial of a study as an MLflow run, in an experiment named after the study.

optuna-integration's ``MLflowCallback`` logs a trial's params and final value, but not its intermediate values as
steps nor its state as the run's status, which is what a team comparing learning curves in MLflow wants; so this
is a small study callback on ``MlflowClient``. Each run gets: every hyperparameter (searched and fixed) as params,
each intermediate report as the study metric at its step, the reported evaluation's metrics (``val_*``) and the
numeric user attributes (times, throughput, epochs, memory) as final metrics, the other user attributes as tags,
and the trial's state (COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED) as its status and a tag.
"""
from __future__ import annotations

import json
import time
from typing import Any

from ..errors import HpsearchError
from . import record

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_TAG = 5000
"""MLflow's tag value limit is larger on most servers; long values (tracebacks, configs) are cut here."""


def store_problem(uri: str) -> str | None:
    """Why MLflow refuses the tracking store at ``uri`` (None: it opens), found by opening it before the study is
    written (MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set): one line for the run's rules
    (:mod:`hpsearch.config.rules`), not a traceback at the first trial."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.tracking._tracking_service.utils import _get_store
    except ImportError:  # a private helper: an MLflow without it is checked at the first trial instead
        return None
    try:
        _get_store(uri)
    except MlflowException as exc:
        first = str(exc).split(". ")[0]
        hint = (" (or set MLFLOW_ALLOW_FILE_STORE=true)" if "filesystem" in str(exc) else "")
        return f"{first}; use a database URI such as sqlite:///mlflow.db{hint}"
    return None


class MLflowLogger:
    """A study callback (``study.optimize(callbacks=[...])``) that logs each finished trial as an MLflow run."""

    def __init__(self, uri: str, metric: str) -> None:
        if not uri:
            raise ValueError(f"uri must be a tracking URI, got {uri!r}")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise HpsearchError("--mlflow needs mlflow: pip install 'hpsearch[mlflow]'") from None
        self.uri = uri
        self.metric = metric
        self.client = MlflowClient(tracking_uri=uri)
        self._experiments: dict[str, str] = {}

    def experiment_id(self, study_name: str) -> str:
        """The id of the experiment named after the study, created on first use (by whichever worker is first)."""
        if study_name not in self._experiments:
            found = self.client.get_experiment_by_name(study_name)
            if found is None:
                try:
                    self._experiments[study_name] = self.client.create_experiment(study_name)
                except Exception:  # another worker created it meanwhile
                    self._experiments[study_name] = self.client.get_experiment_by_name(study_name).experiment_id
            else:
                self._experiments[study_name] = found.experiment_id
        return self._experiments[study_name]

    def __call__(self, study: Any, trial: Any) -> None:
        from mlflow.entities import Metric, Param, RunTag

        state = trial.state.name
        attrs = trial.user_attrs
        hp = attrs.get(record.HYPERPARAMETERS) or trial.params
        now = int(time.time() * 1000)
        run = self.client.create_run(self.experiment_id(study.study_name), run_name=f"trial-{trial.number}",
                                     start_time=int(trial.datetime_start.timestamp() * 1000)
                                     if trial.datetime_start else now)
        metrics = [Metric(self.metric, float(v), now, int(step))
                   for step, v in sorted(trial.intermediate_values.items())]
        for key, value in attrs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(Metric(key, float(value), now, 0))
        for name, v in zip(record.objectives(study), trial.values or []):
            metrics.append(Metric("trial_value" if len(trial.values) == 1 else f"objective_{name}", float(v), now, 0))
        tags = {"optuna.study": study.study_name, "optuna.trial_number": str(trial.number), "optuna.state": state}
        for key, value in attrs.items():
            if key != record.HYPERPARAMETERS and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                tags[f"hpsearch.{key}"] = (value if isinstance(value, str) else json.dumps(value))[:MAX_TAG]
        params = [Param(k, str(v)) for k, v in sorted(hp.items())]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params,
                              tags=[RunTag(k, v) for k, v in tags.items()])
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else now
        self.client.set_terminated(run.info.run_id, status=STATUS.get(state, "FAILED"), end_time=end)

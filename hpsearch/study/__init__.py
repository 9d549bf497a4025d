"""The Optuna study: what hpsearch stores on it (:mod:`hpsearch.study.record`), the runner and its objective,
samplers, confirmation, kept models, storages and heartbeats, local workers, MLflow, and the live view."""

"""hpsearch: hyperparameter search for fine-tuning pretrained transformers, on Optuna.

    import hpsearch
    study = hpsearch.run("search_spaces/lr_dropout.yaml", trials=20, overrides={"fixed.epochs": 1})

The package is built in wings that import only downward (``tests/test_layers.py`` holds it to that):
``cli`` and ``api`` (the faces) over ``outputs`` (export, retrain, report, listing), over ``study`` (the Optuna
study: runner, objective, storage, workers), over ``finetune`` (data, model, the loop, one recipe), over
``config`` (the space file's vocabulary, validation, run options), over ``tasks``, over ``errors``.
"""
from __future__ import annotations

from typing import Any

from .version import __version__ as __version__

__all__ = ["RunOptions", "Space", "export", "load_space", "repair", "run", "train"]


def __getattr__(name: str) -> Any:
    """``hpsearch.run`` and the rest of :mod:`hpsearch.api`, imported on first use so that ``import hpsearch``
    (and ``hpsearch --help``) stays light."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")

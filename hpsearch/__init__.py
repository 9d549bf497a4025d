"""hpsearch: hyperparameter search for fine-tuning pretrained transformers, on Optuna.

    import hpsearch
    study = hpsearch.run("search_spaces/lr_dropout.yaml", trials=20, overrides={"fixed.epochs": 1})
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["export", "load_space", "run", "train"]


def __getattr__(name: str) -> Any:
    """``hpsearch.run`` and the rest of :mod:`hpsearch.api`, imported on first use so that ``import hpsearch``
    (and ``hpsearch --help``) stays light."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")

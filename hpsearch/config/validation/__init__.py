"""Validation of a raw space config: one pass that gathers every problem (file, key, value, why) at once.

It imports neither torch nor transformers and downloads nothing: a space file can be checked on a laptop with
only the CLI installed. What a task needs of the data section (its columns, options and metrics) comes from
the task (:mod:`hpsearch.tasks`), so a new task needs no change here; what each section takes, and its defaults,
comes from :mod:`hpsearch.config.sections`. The parts: the hyperparameters (``_params``), the model and data
(``_model_data``) and the study (``_study``), all writing into one :class:`~._checker.Checker`.
"""
from __future__ import annotations

from typing import Any

from ...errors import ConfigError, Issue
from ..space import Space
from ..vocabulary import TOP_KEYS
from ._checker import Checker
from ._model_data import check_data, check_model
from ._params import (
    check_fixed,
    check_frozen_layers,
    check_layers,
    check_lora_targets,
    check_params,
    check_quantization,
    check_when,
    uses_lora,
)
from ._study import check_study

__all__ = ["check_layers", "check_lora_targets", "uses_lora", "validate"]


def validate(raw: Any, source: str = "<config>", default_name: str = "hpsearch") -> Space:
    """Check a raw config (as parsed from YAML) and return a Space, or raise ConfigError listing every problem."""
    c = Checker()
    if not isinstance(raw, dict):
        raise ConfigError(source, [Issue("", raw, "must be a mapping with study, model, data, params and fixed")])
    c.mapping(raw, "", TOP_KEYS)
    params = check_params(c, raw.get("params"))
    fixed = check_fixed(c, raw.get("fixed"), params)
    when = check_when(c, raw, params, fixed)
    model = check_model(c, raw.get("model"))
    data = check_data(c, raw.get("data"))
    study = check_study(c, raw.get("study"), data.get("task"), params, default_name)
    if when and isinstance(study.get("sampler"), dict) and study["sampler"].get("name") == "grid":
        c.add("study.sampler.name", "grid", "cannot search conditional parameters (when:): a grid is one fixed set "
                                           "of combinations; use tpe or random")
    layers = model.pop("_layers")
    check_frozen_layers(c, params, fixed, layers, model.get("name_or_path"))
    check_quantization(c, model.get("quantization"), params, fixed)
    if c.issues:
        raise ConfigError(source, c.issues)
    config = {"study": study, "model": model, "data": data, "params": params, "fixed": fixed}
    if when:
        config["when"] = when
    if isinstance(raw.get("origin"), dict):
        config["origin"] = raw["origin"]
    return Space(config, source)

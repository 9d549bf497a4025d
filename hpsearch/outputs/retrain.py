"""Retrain: fine-tune one model from a config with nothing left to search, and save it for from_pretrained."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.space import Space
from ..finetune.modeldir import check_new_dir, write_model_dir


def retrain(space: Space, output_dir: str | Path, device: str = "auto", progress: Any = None,
            adapter_only: bool = False) -> dict[str, Any]:
    """Train with the space's fixed hyperparameters; write weights (safetensors), tokenizer, config, metrics.json.

    The same recipe as a trial (:mod:`hpsearch.finetune.recipe`): with ``study.trial_value: best`` the saved
    weights are those of the best whole-validation checkpoint (and ``study.early_stopping`` applies), as in the
    search that chose the config. The rules of a retraining (:func:`hpsearch.config.rules.decide_train`: nothing
    left to search, adapters to save) were checked by the caller.
    """
    from ..finetune.model import load_tokenizer
    from ..finetune.recipe import encode_test, fine_tune, prepare, score_test

    out = check_new_dir(output_dir, "--output-dir")
    prepared = prepare(space, device, weights=False)
    test = encode_test(space, prepared)  # a bad test row is an error now, not after training
    model, result = fine_tune(space, space.hyperparameters(), prepared, callback=progress)
    test = score_test(space, model, prepared, test)
    metrics = {"metrics": result.metrics, "hyperparameters": dict(space.fixed), "origin": space.config.get("origin"),
               **({"test_metrics": test} if test is not None else {}),
               **{k: v for k, v in result.as_dict().items() if k != "metrics"}}
    write_model_dir(out, model, load_tokenizer(space.model), metrics, space.to_dict(),
                    adapter_only=adapter_only)
    return metrics

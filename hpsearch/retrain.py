"""Retrain: fine-tune one model from a config with nothing left to search, and save it for from_pretrained."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import UsageError
from .modeldir import check_new_dir, write_model_dir
from .space import Space


def retrain(space: Space, output_dir: str | Path, device: str = "auto", progress: Any = None,
            adapter_only: bool = False) -> dict[str, Any]:
    """Train with the space's fixed hyperparameters; write weights (safetensors), tokenizer, config, metrics.json.

    With ``study.trial_value: best`` the saved weights are those of the best whole-validation checkpoint (and
    ``study.early_stopping`` applies), as in the search that chose the config.
    """
    from .data import prepare
    from .selection import Selection
    from .model import build_model, linear_module_names, load_tokenizer
    from .validation import check_lora_targets, uses_lora
    from .training import Callback, resolve_device, train

    if adapter_only and space.fixed["lora_r"] <= 0:
        raise UsageError(f"{space.source}: --adapter-only needs fixed.lora_r > 0 (it is {space.fixed['lora_r']})")
    if space.params:
        raise UsageError(f"{space.source}: params {', '.join(space.params)} are still searched; "
                         f"export a trial's config with 'hpsearch export' or fix them under 'fixed:'")
    out = check_new_dir(output_dir, "--output-dir")
    dev = resolve_device(device)
    model_cfg = space.config["model"]
    tokenizer = load_tokenizer(model_cfg)
    data = prepare(space.config["data"], tokenizer, model_cfg["max_length"])
    if uses_lora(space):
        check_lora_targets(space, linear_module_names(model_cfg, data))
    hp = dict(space.fixed)
    t0 = time.perf_counter()
    model = build_model(model_cfg, hp, data, dev)
    result = train(model, data, hp, device=dev, reports_per_epoch=space.study["reports_per_epoch"],
                   callback=progress or Callback(), setup_time=time.perf_counter() - t0,
                   intermediate_eval_samples=space.study["intermediate_eval_samples"],
                   precision=model_cfg["precision"], selection=Selection.from_study(space.study))
    metrics = {"metrics": result.metrics, "hyperparameters": hp, "origin": space.config.get("origin"),
               **{k: v for k, v in result.as_dict().items() if k != "metrics"}}
    write_model_dir(out, model, tokenizer, metrics, space.to_dict(), adapter_only=adapter_only)
    return metrics

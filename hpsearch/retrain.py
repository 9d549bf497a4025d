"""Retrain: fine-tune one model from a config with nothing left to search, and save it for from_pretrained."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import UsageError
from .space import Space, dump_yaml


def retrain(space: Space, output_dir: str | Path, device: str = "auto", progress: Any = None) -> dict[str, Any]:
    """Train with the space's fixed hyperparameters; write weights (safetensors), tokenizer, config, metrics.json."""
    from .data import prepare
    from .training import Callback, build_model, load_tokenizer, resolve_device, train

    if space.params:
        raise UsageError(f"{space.source}: params {', '.join(space.params)} are still searched; "
                         f"export a trial's config with 'hpsearch export' or fix them under 'fixed:'")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--output-dir {output_dir}: exists and is not empty; choose a new directory")
    dev = resolve_device(device)
    model_cfg = space.config["model"]
    tokenizer = load_tokenizer(model_cfg)
    data = prepare(space.config["data"], tokenizer, model_cfg["max_length"])
    hp = dict(space.fixed)
    t0 = time.perf_counter()
    model = build_model(model_cfg, hp, data, dev)
    result = train(model, data, hp, device=dev, reports_per_epoch=space.study["reports_per_epoch"],
                   callback=progress or Callback(), setup_time=time.perf_counter() - t0,
                   intermediate_eval_samples=space.study["intermediate_eval_samples"],
                   precision=model_cfg["precision"])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    metrics = {"metrics": result.metrics, "hyperparameters": hp, "origin": space.config.get("origin"),
               **{k: v for k, v in result.as_dict().items() if k != "metrics"}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "hpsearch_config.yaml").write_text(dump_yaml(space.to_dict()), encoding="utf-8")
    return metrics

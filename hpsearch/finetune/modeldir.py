"""A saved model directory: what ``from_pretrained`` loads, plus what the search knew about it.

Weights as safetensors, ``config.json`` (with the label names), the tokenizer, ``metrics.json`` (metrics,
hyperparameters, where it came from) and ``hpsearch_config.yaml`` (the config that retrains it). Written by
``hpsearch train`` and by ``run --keep-best`` for each kept trial, so an exported model looks like a retrained one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.files import dump_yaml
from ..errors import UsageError

METRICS_FILE = "metrics.json"
CONFIG_FILE = "hpsearch_config.yaml"


def check_new_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a Path if it does not exist or is empty; a UsageError naming ``flag`` otherwise."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{flag} {path}: exists and is not empty; choose a new directory")
    return out


def write_model_dir(out: str | Path, model: Any, tokenizer: Any, metrics: dict[str, Any], config: dict,
                    adapter_only: bool = False) -> Path:
    """Save ``model`` and ``tokenizer`` for ``from_pretrained``, with ``metrics`` and the resolved ``config``.

    A LoRA model is merged first, so the directory loads without peft (this consumes its adapters); with
    ``adapter_only`` the adapter and the task's head are saved instead, for ``PeftModel.from_pretrained``."""
    from .lora import is_peft, merged

    if adapter_only and not is_peft(model):
        raise UsageError("--adapter-only: the model has no LoRA adapter (lora_r is 0)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (model if adapter_only else merged(model)).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
    (out / CONFIG_FILE).write_text(dump_yaml(config), encoding="utf-8")
    return out

"""LoRA through peft: adapters on the chosen linear modules, the task's new head trained in full, the rest frozen.

``lora_r`` 0 means full fine-tuning, so one search can compare both. With ``num_frozen_layers`` k, the first k
blocks keep no trainable adapter either (their adapters stay at zero: the same model as without them). A saved
model is merged (it loads without peft); ``hpsearch train --adapter-only`` saves the adapter alone.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..config.vocabulary import ALL_LINEAR, Hyperparameters
from ..config.vocabulary import lora_targets as targets
from ..errors import HpsearchError


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The short names of the model's linear layers (what ``lora_target_modules`` may list), sorted."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D)) and name})


def unknown_targets(model: torch.nn.Module, value: str) -> list[str]:
    """The names in ``value`` that match no linear layer of ``model`` (none for all-linear)."""
    wanted = targets(value)
    if wanted == ALL_LINEAR:
        return []
    known = set(linear_module_names(model))
    return [name for name in wanted if name not in known]


def apply(model: torch.nn.Module, hp: Hyperparameters, peft_task_type: str,
          blocks: torch.nn.ModuleList | None) -> torch.nn.Module:
    """Wrap ``model`` in peft LoRA adapters per ``hp``; the first ``hp.num_frozen_layers`` of ``blocks`` get no
    trainable adapter. Returns ``model`` unchanged when ``lora_r`` is 0."""
    if hp.lora_r <= 0:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    missing = unknown_targets(model, hp.lora_target_modules)
    if missing:
        raise HpsearchError(f"lora_target_modules {', '.join(missing)}: no such linear layer in the model; "
                            f"it has {', '.join(linear_module_names(model))}")
    config = LoraConfig(task_type=TaskType[peft_task_type], r=hp.lora_r, lora_alpha=hp.lora_alpha,
                        lora_dropout=hp.lora_dropout, target_modules=_targets(model, hp, peft_task_type))
    with warnings.catch_warnings():  # peft asks transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if peft_task_type == "QUESTION_ANS":  # peft 0.21's QA forward drops token_type_ids and position_ids: pass all
        peft_model.forward = peft_model.base_model.forward
    k = hp.num_frozen_layers
    if k and blocks is not None:
        for block in list(blocks)[:k]:
            for name, p in block.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(False)
    return peft_model


HEADS = {"TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}
"""The new heads peft trains in full for these tasks, which its ``all-linear`` would also give an adapter (it leaves
out only a sequence classifier's, and an output embedding): the two clash (peft 0.21: "modules_to_save cannot be
applied to modules of type lora.Linear")."""


def _targets(model: torch.nn.Module, hp: Hyperparameters, peft_task_type: str) -> Any:
    """peft's ``target_modules`` for ``hp.lora_target_modules``: ``all-linear`` spelled out as every linear layer
    but the task's head where peft would otherwise put an adapter on it as well."""
    wanted = targets(hp.lora_target_modules)
    heads = HEADS.get(peft_task_type)
    if wanted != ALL_LINEAR or not heads:
        return wanted
    from transformers.pytorch_utils import Conv1D

    return [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and name
            and name.rsplit(".", 1)[-1] not in heads]


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (carries adapters)."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merged(model: Any) -> Any:
    """A plain transformers model with the adapters folded into the weights (loads without peft)."""
    return model.merge_and_unload() if is_peft(model) else model

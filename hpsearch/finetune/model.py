"""Model construction that every task shares: tokenizer and pretrained weights read once per process, the
task's head config, the trial's dropout, frozen layers, and a pad token for decoders that have none.

A trial's setup costs a model construction and a state-dict copy, not a checkpoint load. Which Auto class and
head a model gets is the task's (:mod:`hpsearch.tasks`); everything else here is the same for every task.
"""
from __future__ import annotations

from typing import Any

import torch

from ..config.sections import ModelSection
from ..config.vocabulary import Hyperparameters, model_layer_count
from ..errors import HpsearchError
from ..tasks.encoded import PreparedData
from . import lora
from .dropout import install as install_cheap_dropout
from .precision import FP32, Precision

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout_rate")
"""Config attributes that different architectures use for hidden and attention dropout."""


_TOKENIZERS: dict[tuple, Any] = {}
_WEIGHTS: dict[tuple, dict[str, torch.Tensor]] = {}


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model: ModelSection) -> Any:
    """The model's tokenizer, loaded once per process."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    key = (model.name_or_path, model.revision)
    if key not in _TOKENIZERS:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path, revision=model.revision,
                                                      trust_remote_code=model.trust_remote_code)
        except Exception as exc:
            raise HpsearchError(f"model.name_or_path {model.name_or_path!r}: cannot load the tokenizer: "
                                f"{exc}") from exc
        _TOKENIZERS[key] = with_pad_token(tokenizer)
    return _TOKENIZERS[key]


def with_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token (most decoders) its EOS as padding, as decoder fine-tuning does.

    Padded positions are masked out of attention, and decoder classifiers find each row's last real token by the
    pad id, which the model config then carries too (:func:`head_config`)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(model: ModelSection, **overrides: Any) -> Any:
    """The model's transformers config (no weights), with ``overrides`` applied."""
    from transformers import AutoConfig

    _quiet_transformers()
    try:
        return AutoConfig.from_pretrained(model.name_or_path, revision=model.revision,
                                          trust_remote_code=model.trust_remote_code, **overrides)
    except Exception as exc:
        raise HpsearchError(f"model.name_or_path {model.name_or_path!r}: cannot load its config: {exc}") from exc


def layer_count(model: ModelSection) -> int | None:
    """How many encoder layers the model has (for num_frozen_layers checks before training)."""
    return model_layer_count(load_model_config(model).to_dict())


def auto_class(name: str) -> Any:
    """A transformers Auto class by name (``AutoModelForTokenClassification`` ...)."""
    import transformers

    return getattr(transformers, name)


def _pretrained_weights(model: ModelSection, config: Any, auto: str) -> dict[str, torch.Tensor]:
    """The pretrained body weights (no task head), read from disk once per process and Auto class, in the
    checkpoint's dtype (a bf16 7B model is 14 GB of host memory per worker, not 28)."""
    key = (model.name_or_path, model.revision, auto)
    if key not in _WEIGHTS:
        try:
            loaded, info = auto_class(auto).from_pretrained(
                model.name_or_path, config=config, revision=model.revision,
                trust_remote_code=model.trust_remote_code, output_loading_info=True)
        except Exception as exc:
            raise HpsearchError(f"model.name_or_path {model.name_or_path!r}: cannot load weights: {exc}") from exc
        fresh = set(info.get("missing_keys", ()))
        _WEIGHTS[key] = {k: v.detach().clone() for k, v in loaded.state_dict().items() if k not in fresh}
    return _WEIGHTS[key]


def set_dropout(config: Any, p: float) -> list[str]:
    """Set every hidden/attention dropout attribute the config has to ``p``; return the names set."""
    names = [k for k in DROPOUT_KEYS if isinstance(getattr(config, k, None), (int, float))]
    if not names:
        raise HpsearchError(f"model type {config.model_type!r} has none of the dropout settings "
                            f"{', '.join(DROPOUT_KEYS)}; fix dropout out of the search")
    for k in names:
        setattr(config, k, p)
    return names


def encoder_layers(model: torch.nn.Module, count: int) -> torch.nn.ModuleList:
    """The model's stack of encoder layers: the first ModuleList with ``count`` blocks in its base model."""
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise HpsearchError(f"cannot find the {count} encoder layers of {type(model).__name__} to freeze")


def embedding_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that embed the input: an encoder's ``embeddings`` block (word, position, type, norm), else the
    input embedding plus any learned position table (GPT-2's ``wpe``, OPT's ``embed_positions``)."""
    base = model.base_model
    if isinstance(getattr(base, "embeddings", None), torch.nn.Module):
        return [base.embeddings]
    found = [model.get_input_embeddings()]
    for name in ("wpe", "embed_positions", "position_embeddings"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            found.append(module)
    return found


def freeze_layers(model: torch.nn.Module, k: int, count: int | None) -> int:
    """Freeze the embeddings plus the first ``k`` transformer blocks (encoder or decoder); return the number of
    frozen parameters."""
    if k <= 0:
        return 0
    if count is None or k > count:
        raise HpsearchError(f"num_frozen_layers={k} exceeds the model's {count} layers")
    modules = [*embedding_modules(model), *list(encoder_layers(model, count))[:k]]
    frozen = 0
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def head_config(model: ModelSection, data: PreparedData) -> Any:
    """The model config with the head the data's task needs (label names included) and a pad token id."""
    config = load_model_config(model, **data.task.head_config(data.label_names))
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = load_tokenizer(model).pad_token_id
    return config


def preload(model: ModelSection, data: PreparedData) -> None:
    """Read the pretrained weights into memory now, so that no trial pays for it."""
    _pretrained_weights(model, head_config(model, data), data.task.auto_class)


def checkpoint_dtype(model: ModelSection) -> torch.dtype | None:
    """The dtype the checkpoint's config.json declares (None when it declares none)."""
    dtype = getattr(load_model_config(model), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def attn_implementation(model: ModelSection, device: torch.device, precision: Precision) -> str | None:
    """The attention kernel to ask transformers for: ``model.attn_implementation``, where ``auto`` is
    flash_attention_2 on a GPU in half precision with flash-attn installed, else transformers' own default (the run's
    rules refuse flash_attention_2 without flash-attn before anything starts)."""
    import importlib.util

    if model.attn_implementation != "auto":
        return model.attn_implementation
    installed = importlib.util.find_spec("flash_attn") is not None
    half = precision.autocast is not None or precision.weights != torch.float32
    return "flash_attention_2" if installed and device.type == "cuda" and half else None


def _model_class(auto: str, config: Any) -> Any:
    """The concrete model class an Auto class builds for ``config`` (None for remote code: use the Auto class)."""
    try:
        return auto_class(auto)._model_mapping[type(config)]
    except (KeyError, AttributeError):
        return None


def placement_of(device: torch.device) -> dict[str, Any]:
    """How ``from_pretrained`` puts a model on ``device``: built there (``device_map``) on a GPU, so that a 7B body
    never passes through host memory twice; as built on the CPU."""
    return {"device_map": {"": device}} if device.type != "cpu" else {}


def _load(model: ModelSection, config: Any, auto: str, device: torch.device, precision: Precision,
          attn: str | None, weights: dict[str, torch.Tensor] | None, adopt: bool = False) -> torch.nn.Module:
    """The task model with pretrained weights, built straight on ``device`` in the plan's weight dtype: the body
    from the in-memory copy of the checkpoint (or, for quantized weights, the checkpoint through bitsandbytes), the
    head initialised by transformers under the trial's seed; no random initialisation of the body first."""
    config.dtype = precision.weights
    extra = {"attn_implementation": attn} if attn else {}
    placement = placement_of(device)
    if model.quantized:
        from .quantize import bnb_config

        return auto_class(auto).from_pretrained(
            model.name_or_path, config=config, revision=model.revision, trust_remote_code=model.trust_remote_code,
            quantization_config=bnb_config(model.quantization, precision), **placement, **extra)
    cls = _model_class(auto, config)
    if cls is None:  # remote code: build, then copy the weights in
        built = auto_class(auto).from_config(config, trust_remote_code=model.trust_remote_code, **extra)
        _, unexpected = built.load_state_dict(weights, strict=False)
        if unexpected:
            raise HpsearchError(f"pretrained weights do not fit the model: unexpected {unexpected[:3]}")
        return built.to(device)
    # from_pretrained adopts a tensor that already has the wanted dtype and device: copy those, so that training
    # never writes into the copy every trial starts from.
    own = weights if adopt else {k: v.clone() if v.dtype == precision.weights and v.device == device else v
                                 for k, v in weights.items()}
    return cls.from_pretrained(None, config=config, state_dict=own, **placement, **extra)


def build_model(spec: ModelSection, hp: Hyperparameters, data: PreparedData, device: torch.device,
                precision: Precision | None = None, base: dict[str, torch.Tensor] | None = None,
                frozen: bool = False) -> torch.nn.Module:
    """A fresh model for the data's task, on ``device``: pretrained body, seeded new head, the trial's dropout,
    frozen layers, gradient checkpointing, LoRA adapters when ``lora_r`` > 0 (:mod:`hpsearch.finetune.lora`), and
    its parameters in the dtypes ``precision`` says (default: fp32). With ``base`` (:func:`shared_base`) the body's
    weights are those tensors themselves, not copies: models that never train them (LoRA members of a fused group,
    and its executor) hold one base between them. ``frozen``: nothing trains (a fused group's executor), so mixed
    precision leaves every matrix as loaded rather than making fp32 master copies of them."""
    precision = precision or FP32
    auto = data.task.auto_class
    config = head_config(spec, data)
    weights = base if base is not None else None if spec.quantized else _pretrained_weights(spec, config, auto)
    set_dropout(config, hp.dropout)
    torch.manual_seed(hp.seed)  # the head's initialization depends on the trial's seed only
    model = _load(spec, config, auto, device, precision, attn_implementation(spec, device, precision), weights,
                  adopt=base is not None)
    count = model_layer_count(config.to_dict())
    freeze_layers(model, hp.num_frozen_layers, count)
    if device.type == "cpu":  # on a GPU native dropout is fused and cheap already
        install_cheap_dropout(model)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    if hp.lora_r > 0:
        blocks = encoder_layers(model, count) if count and hp.num_frozen_layers else None
        model = lora.apply(model, hp, data.task.peft_task_type, blocks)
    if frozen:
        model.requires_grad_(False)
    model = cast_parameters(model, precision)
    return model if spec.quantized else model.to(device)  # bitsandbytes' weights are placed at load and refuse .to


def shared_base(spec: ModelSection, data: PreparedData, device: torch.device,
                precision: Precision | None = None) -> dict[str, torch.Tensor]:
    """The pretrained body's weights on ``device`` in the plan's weight dtype, once, for models to adopt
    (:func:`build_model`'s ``base``)."""
    dtype = (precision or FP32).weights
    weights = _pretrained_weights(spec, head_config(spec, data), data.task.auto_class)
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in weights.items()}


def cast_parameters(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Trained parameters in the plan's master dtype (fp32 for mixed precision: small updates are not lost), frozen
    matrices left as loaded, frozen vectors (norms, biases: a rounding error of the memory, and a CPU's layer norm
    takes no half-precision weights with fp32 inputs) in the master dtype too; fp32 and bf16-true give every
    floating weight one dtype. Quantized weights are not floating and stay as they are."""
    for p in model.parameters():
        if not p.is_floating_point():
            continue
        want = precision.master if (p.requires_grad or not precision.mixed or p.ndim < 2) else p.dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    return model


def matmul_parameters(spec: ModelSection, data: PreparedData) -> int:
    """The parameters of the task model's matrix products (its linear layers; embeddings are lookups), counted on
    a model built on the meta device (no weights)."""
    from transformers.pytorch_utils import Conv1D

    config = head_config(spec, data)
    with torch.device("meta"):
        model = auto_class(data.task.auto_class).from_config(config, trust_remote_code=spec.trust_remote_code)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))


def linear_module_names(spec: ModelSection, data: PreparedData) -> list[str]:
    """The short names of the task model's linear layers, from a model built on the meta device (no weights)."""
    config = head_config(spec, data)
    with torch.device("meta"):
        model = auto_class(data.task.auto_class).from_config(config, trust_remote_code=spec.trust_remote_code)
    return lora.linear_module_names(model)

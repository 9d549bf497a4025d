"""Causal-LM supervised fine-tuning (instruction tuning): a prompt and a response per row, or one text.

With ``prompt_column`` and ``response_column`` the prompt is context only: its tokens are masked out of the loss
and the metrics, and the model learns the response. With ``text_column`` alone every token is learned. An EOS
token ends each example, so the model learns to stop. Metrics: the mean next-token loss over learned tokens
(``eval_loss``, default, minimized) and its exponential, ``perplexity``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import HpsearchError
from .base import IGNORE, Column, Metric

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, RawSplit, Rows

CHUNK_ELEMENTS = 2**26
"""fp32 logits computed at once in evaluation (256 MB): 512 tokens of a 128k vocabulary."""
LOGIT_SCALES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config attributes of models that change their logits after the output layer (Gemma's soft capping, Cohere's and
Granite's scales): those evaluate from their logits."""


class Hidden(NamedTuple):
    """A causal LM's last hidden states and its output layer, in place of logits (evaluation)."""

    hidden: Any
    head: Any


def body_and_head(model: Any) -> tuple[Any, Any] | None:
    """The (peft-unwrapped) model's body, whose ``last_hidden_state`` the output layer turns into logits, and that
    output layer; None where the logits are anything more than that (a scale, soft capping) or the parts are not
    where transformers keeps them."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    config = getattr(base, "config", None)
    if not isinstance(head, torch.nn.Linear) or not isinstance(body, torch.nn.Module) or body is base:
        return None
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in LOGIT_SCALES):
        return None
    return body, head


class CausalLM:
    """``data.task: causal_lm``."""

    name = "causal_lm"
    metrics = (
        Metric("eval_loss", False, "mean next-token cross-entropy over the learned (response) tokens"),
        Metric("perplexity", False, "exp(eval_loss)"),
    )
    default_metric = "eval_loss"
    columns = (
        Column("prompt_column", None, required=False, help="the instruction / context, masked out of the loss"),
        Column("response_column", None, required=False, help="what the model learns to answer"),
        Column("text_column", None, required=False, help="one text learned in full (without a response column)"),
    )
    options: dict[str, Any] = {}
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    host_reads = "it picks the positions a batch learns on the host (logits_to_keep: a read of the device)"
    """What the training forward reads from the device: no CUDA graph can capture it (``model.cuda_graphs`` is
    refused for this task)."""

    def column_problems(self, columns: dict[str, str | None]) -> list[tuple[str, str]]:
        """A response column (with or without a prompt column), or a text column; not both kinds."""
        if columns.get("response_column") and columns.get("text_column"):
            return [("text_column", "is for a text learned in full; with response_column, drop it (the prompt "
                                    "goes in prompt_column)")]
        if columns.get("prompt_column") and not columns.get("response_column"):
            return [("response_column", "is required with prompt_column (what the model learns to answer)")]
        if not columns.get("response_column") and not columns.get("text_column"):
            return [("response_column", "is required (with an optional prompt_column), or give text_column")]
        return []

    def encode(self, train: RawSplit, validation: RawSplit, tokenizer: Any, max_length: int,
               options: dict[str, Any]) -> tuple[Encoded, Encoded, list[str]]:
        if tokenizer.eos_token_id is None:
            raise HpsearchError("causal_lm needs a tokenizer with an EOS token (to end each example)")
        return _encode(train, tokenizer, max_length), _encode(validation, tokenizer, max_length), []

    def head_config(self, label_names: list[str]) -> dict[str, Any]:
        return {}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> Any:
        """Logits at the positions whose next token some row of the batch learns (``logits_to_keep``), or at
        every position when that is all of them or the model takes no ``logits_to_keep``.

        The output layer over the vocabulary is as costly as the whole body of a small decoder; prompt tokens,
        masked out of the loss, need none of it (bench/README.md has the measurement). In evaluation (no
        gradients) a model whose logits are its output layer applied to its body's last hidden states returns
        those states instead (:class:`Hidden`), and the loss is computed a chunk of tokens at a time: a 128k
        vocabulary's logits for a batch of 1,024-token rows are tens of GB in fp32."""
        import torch

        if not torch.is_grad_enabled():
            parts = body_and_head(model)
            if parts is not None:
                body, head = parts
                return Hidden(body(**batch).last_hidden_state, head)
        keep = learned_positions(labels)
        if keep is None or not takes_logits_to_keep(model):
            return model(**batch).logits
        return model(**batch, logits_to_keep=keep).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        logits, target = next_token_pairs(logits, labels)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE)

    def loss_units(self, labels: torch.Tensor) -> torch.Tensor:
        """The learned next tokens the mean loss averages over (a row's first token is never predicted)."""
        return (labels[:, 1:] != IGNORE).sum()

    def evaluate_batch(self, logits: Any, labels: torch.Tensor, rows: Rows) -> Any:
        """The batch's summed next-token loss and the number of learned tokens, in chunks of tokens so that at
        most :data:`CHUNK_ELEMENTS` fp32 logits exist at once."""
        import torch

        if isinstance(logits, Hidden):
            hidden, target = logits.hidden[:, :-1], labels[:, 1:]
        else:
            hidden, target = next_token_pairs(logits, labels)
        keep = target != IGNORE
        hidden, target = hidden[keep], target[keep]
        width = logits.head.out_features if isinstance(logits, Hidden) else hidden.shape[-1]
        rows = max(1, CHUNK_ELEMENTS // width)
        loss = 0.0
        for start in range(0, len(target), rows):
            part = hidden[start:start + rows]
            part = logits.head(part) if isinstance(logits, Hidden) else part
            loss += float(torch.nn.functional.cross_entropy(part.float().detach(), target[start:start + rows],
                                                            reduction="sum"))
        return loss, len(target)

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]:
        import math

        tokens = sum(b[1] for b in batches)
        if tokens == 0:
            raise HpsearchError("causal_lm: no response tokens to evaluate (every example truncated to its prompt?)")
        loss = sum(b[0] for b in batches) / tokens
        return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def learned_positions(labels: torch.Tensor) -> torch.Tensor | None:
    """The positions p whose next token (p + 1) some row learns; None when that is every position."""
    learned = (labels[:, 1:] != IGNORE).any(0)
    if bool(learned.all()):
        return None
    return learned.nonzero().flatten()


def next_token_pairs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the labels they predict: position p predicts p + 1. ``logits`` are at every position, or only at
    :func:`learned_positions` (the same function of ``labels``, so the two always line up)."""
    if logits.shape[1] == labels.shape[1]:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels[:, learned_positions(labels) + 1]


_TAKES_KEEP: dict[type, bool] = {}


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the (peft-unwrapped) model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = type(base)
    if kind not in _TAKES_KEEP:
        _TAKES_KEEP[kind] = "logits_to_keep" in inspect.signature(base.forward).parameters
    return _TAKES_KEEP[kind]


def _encode(split: RawSplit, tokenizer: Any, max_length: int) -> Encoded:
    """Prompt (masked) + response + EOS, or text + EOS, truncated to ``max_length``; labels = ids where learned."""
    import torch

    from .encoded import Encoded, pad_id, padded, text_values

    eos = tokenizer.eos_token_id
    if split.columns.get("response_column"):
        responses = text_values(split, "response_column")
        prompts = text_values(split, "prompt_column") if split.columns.get("prompt_column") else [""] * len(responses)
    else:
        responses = text_values(split, "text_column")
        prompts = [""] * len(responses)
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    rows, masks = [], []
    for p, r in zip(prompt_ids, response_ids):
        p = [t for t in p if t != eos]  # a tokenizer that appends EOS to the prompt would end the example early
        ids = (p + r + [eos])[:max_length]
        rows.append(ids)
        masks.append(min(len(p), len(ids)))
    ids, lengths = padded(rows, pad_id(tokenizer, eos))
    labels = torch.full(ids.shape, IGNORE, dtype=torch.int64)
    for i, (row, start) in enumerate(zip(rows, masks)):
        labels[i, start: len(row)] = ids[i, start: len(row)]
    return Encoded(ids, lengths, labels)


TASK = CausalLM()

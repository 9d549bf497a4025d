"""Sequence-to-sequence fine-tuning (summarization, translation) for encoder-decoders (T5, BART families).

Each row has a source text and a target text. The encoder reads the source (``source_prefix`` first, e.g. T5's
``"summarize: "``), truncated to ``model.max_length``; the decoder learns the target, truncated to
``max_target_length`` and ended with EOS, teacher-forced (the labels shifted right are its input). Metrics:
``eval_loss`` (default, minimized: no generation needed, so every trial's evaluations stay cheap); ``rouge1``,
``rouge2``, ``rougeL``: mean F-measures that the ``rouge-score`` library computes (stemmed) between generated and
reference texts (summarization); ``bleu`` and ``chrf``: sacrebleu's corpus BLEU and chrF (0-100, its default
tokenization: what translation papers report).
Generation (``max_new_tokens``, ``num_beams``; greedy by default) runs on the final evaluation, and on every
evaluation when the study's metric is a generated one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DataError, HpsearchError
from .base import IGNORE, Column, Metric

if TYPE_CHECKING:
    import torch

    from .encoded import Encoded, PreparedData, RawSplit, Rows


ROUGE = ("rouge1", "rouge2", "rougeL")


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be an integer >= 1"
    return None


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string (may be empty)"


class Seq2Seq:
    """``data.task: seq2seq``."""

    name = "seq2seq"
    metrics = (
        Metric("eval_loss", False, "mean cross-entropy over the target tokens (teacher-forced)"),
        Metric("rouge1", True, "mean ROUGE-1 F-measure of generated vs reference text", generated=True),
        Metric("rouge2", True, "mean ROUGE-2 F-measure", generated=True),
        Metric("rougeL", True, "mean ROUGE-L F-measure (longest common subsequence)", generated=True),
        Metric("bleu", True, "sacrebleu's corpus BLEU, 0-100 (translation)", generated=True),
        Metric("chrf", True, "sacrebleu's corpus chrF, 0-100 (translation)", generated=True),
    )
    default_metric = "eval_loss"
    columns = (
        Column("source_column", "source", help="the input text (document, sentence to translate)"),
        Column("target_column", "target", help="the text to produce (summary, translation)"),
    )
    options: dict[str, Any] = {"max_target_length": 128, "max_new_tokens": 128, "num_beams": 1,
                               "source_prefix": ""}
    option_checks = {"max_target_length": _positive_int, "max_new_tokens": _positive_int,
                     "num_beams": _positive_int, "source_prefix": _text}
    """Options that are not a choice among values: each maps a value to why it is wrong, or None."""
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    host_reads = ("transformers builds its encoder's and decoder's masks from the 2-D padding mask, first asking the "
                  "device whether it may drop them (padding_mask.all())")
    """What the training forward reads from the device: no CUDA graph can capture it (``model.cuda_graphs`` is
    refused for this task)."""

    def column_problems(self, columns: dict[str, str | None]) -> list[tuple[str, str]]:
        return []

    def encode(self, train: RawSplit, validation: RawSplit, tokenizer: Any, max_length: int,
               options: dict[str, Any]) -> tuple[Encoded, Encoded, list[str]]:
        return (_encode(train, tokenizer, max_length, options), _encode(validation, tokenizer, max_length, options),
                [])

    def head_config(self, label_names: list[str]) -> dict[str, Any]:
        return {}

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the decoder reads the labels shifted right (the model's own start token first)."""
        return model(**batch, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels)).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def loss_units(self, labels: torch.Tensor) -> torch.Tensor:
        """The target tokens the mean loss averages over."""
        return (labels != IGNORE).sum()

    def evaluate_batch(self, logits: torch.Tensor, labels: torch.Tensor, rows: Rows) -> Any:
        """The batch's summed target-token loss and its number of target tokens."""
        import torch

        keep = labels != IGNORE
        loss = torch.nn.functional.cross_entropy(logits.float()[keep], labels[keep], reduction="sum")
        return float(loss), int(keep.sum())

    def metrics_from(self, batches: list[Any], label_names: list[str], options: dict[str, Any]) -> dict[str, float]:
        tokens = sum(b[1] for b in batches)
        if tokens == 0:
            raise HpsearchError("seq2seq: no target tokens to evaluate (empty targets?)")
        return {"eval_loss": sum(b[0] for b in batches) / tokens}

    def generate_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                       data: PreparedData) -> list[tuple[str, str]]:
        """Generated and reference texts of one batch (references decoded from the truncated targets)."""
        tokenizer, options = data.tokenizer, data.options
        if tokenizer is None:
            raise HpsearchError("seq2seq: generation needs the tokenizer (prepare the data with "
                                "hpsearch.finetune.data)")
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=options["max_new_tokens"], num_beams=options["num_beams"],
                             do_sample=False)
        references = labels.masked_fill(labels == IGNORE, tokenizer.pad_token_id)
        predicted = tokenizer.batch_decode(out, skip_special_tokens=True)
        gold = tokenizer.batch_decode(references, skip_special_tokens=True)
        return list(zip(predicted, gold))

    def generated_metrics(self, parts: list[Any], data: PreparedData) -> dict[str, float]:
        """Mean ROUGE F-measures over the split, as ``rouge_score.rouge_scorer.RougeScorer`` computes them, and
        sacrebleu's corpus BLEU and chrF."""
        import sacrebleu
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
        pairs = [pair for part in parts for pair in part]
        totals = dict.fromkeys(ROUGE, 0.0)
        for predicted, gold in pairs:
            scores = scorer.score(gold, predicted)  # (target, prediction)
            for name in ROUGE:
                totals[name] += scores[name].fmeasure
        out = {name: total / max(1, len(pairs)) for name, total in totals.items()}
        hypotheses, references = [p for p, _ in pairs], [[g for _, g in pairs]]
        out["bleu"] = float(sacrebleu.corpus_bleu(hypotheses, references).score) if pairs else 0.0
        out["chrf"] = float(sacrebleu.corpus_chrf(hypotheses, references).score) if pairs else 0.0
        return out


def _encode(split: RawSplit, tokenizer: Any, max_length: int, options: dict[str, Any]) -> Encoded:
    """Prefixed sources as input ids; targets as labels right-padded with IGNORE, with their own lengths."""

    from .encoded import Encoded, padded, text_values, tokenize

    prefix = options["source_prefix"]
    sources = text_values(split, "source_column", prefix)
    targets = text_values(split, "target_column")
    ids, lengths, _ = tokenize(tokenizer, sources, None, max_length)
    limit = options["max_target_length"]
    rows = tokenizer(text_target=targets, truncation=True, max_length=limit)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None:  # T5 and BART tokenizers end targets with EOS; others get one, so the model learns to stop
        rows = [r if r and r[-1] == eos else (r[: limit - 1] + [eos]) for r in rows]
    labels, label_lengths = padded(rows, IGNORE)
    if len(rows) and int(label_lengths.min()) == 0:
        raise DataError(f"{split.where}: a target encodes to no tokens")
    return Encoded(ids, lengths, labels, None, label_lengths)


TASK = Seq2Seq()

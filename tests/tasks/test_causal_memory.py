"""A decoder with a 128k vocabulary evaluates 1,024-token rows within a memory budget: evaluation never holds the
whole batch's fp32 logits over the vocabulary (4.2 GB for one batch of 8 such rows), and gets the same loss."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

VOCAB = 128256  # Llama 3's
BUDGET_MB = 1500
"""Peak resident memory allowed for the whole evaluating process: torch, transformers, the model (two 128k x 32
tables) and the evaluation. The logits of one evaluation batch alone would be 8 x 1,024 x 128,256 x 4 B = 4.2 GB."""

EVALUATE = """
import json, sys
import torch
from hpsearch.config.load import load_space
from hpsearch.finetune import model as M
from hpsearch.finetune import evaluation as E
from hpsearch.finetune.device import peak_memory_mb
from hpsearch.finetune.recipe import prepare
from hpsearch.tasks import causal_lm

space = load_space(sys.argv[1])
prepared = prepare(space, "cpu")
model = M.build_model(space.model, space.hyperparameters(), prepared.data, prepared.device, prepared.precision)
validation = prepared.data.validation
out = {"rows": len(validation), "tokens": int(validation.lengths.sum())}
# The 8 rows as one batch: the memory this test is about (this program's own peak: ru_maxrss counts the parent's).
out["eval_loss_batch"] = E.evaluate(model, validation, prepared.data, prepared.device)["eval_loss"]
out["peak_mb"] = peak_memory_mb(torch.device("cpu"))
two = validation.head(2)  # the loss of two rows, a row per batch: what the logits way can afford
out["eval_loss"] = E.evaluate(model, two, prepared.data, prepared.device, batch_tokens=1024)["eval_loss"]
causal_lm.body_and_head = lambda model: None  # the same two rows from full logits: the reference loss
out["eval_loss_logits"] = E.evaluate(model, two, prepared.data, prepared.device, batch_tokens=1024)["eval_loss"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_vocabulary_decoder(tiny_decoders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32) with a 128k-token vocabulary and untied output layer, on the tiny decoders'
    tokenizer (its ids are a prefix of the vocabulary)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llama-128k")
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoders["llama"])
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                 bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
                     ).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def test_a_128k_vocabulary_decoder_evaluates_1024_token_rows_within_a_memory_budget(big_vocabulary_decoder: Path,
                                                                                     tmp_path: Path) -> None:
    words = "alice bob carol dave paris rome oslo met visited went to the and".split()
    rows = [{"text": " ".join(words[(i + j) % len(words)] for j in range(1100))} for i in range(8)]
    for name in ("train", "dev"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps({
        "study": {"name": "mem", "pruner": "none"},
        "model": {"name_or_path": str(big_vocabulary_decoder), "max_length": 1024, "precision": "fp32"},
        "data": {"task": "causal_lm", "text_column": "text", "train": {"path": str(tmp_path / "train.jsonl")},
                 "validation": {"path": str(tmp_path / "dev.jsonl")}},
        "params": {}, "fixed": {"dropout": 0.0}}))
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HPSEARCH_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", EVALUATE, str(space)], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    hidden = json.loads(out.stdout.strip().splitlines()[-1])
    assert hidden["rows"] == 8 and hidden["tokens"] == 8 * 1024  # one evaluation batch of 8 x 1,024 tokens
    assert hidden["peak_mb"] < BUDGET_MB, hidden
    assert hidden["eval_loss"] == pytest.approx(hidden["eval_loss_logits"], rel=1e-5)

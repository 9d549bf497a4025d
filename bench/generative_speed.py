"""Per-trial speed of the generative tasks: hpsearch's loop against HF Trainer / Seq2SeqTrainer on one config.

    python -m bench.generative_speed --task seq2seq --rounds 2     # writes bench/results/RESULTS_seq2seq.md
    python -m bench.generative_speed --task causal_lm --rounds 2   # writes bench/results/RESULTS_causal_lm.md

No pretrained decoder or encoder-decoder is on the package registries, so both sides fine-tune the same
randomly initialised model (a Llama-shaped decoder or a T5-shaped encoder-decoder, about all-MiniLM-L6-v2's size,
on its WordPiece tokenizer), saved once under models/. Speed does not depend on the weights' values. Data: SST-2
sentences (../shared/data/sst2/train.tsv), as prompt -> sentiment word (causal_lm, prompt masked out of the loss)
or sentence -> its first eight words (seq2seq, ROUGE of greedy generations on the final evaluation).

Each side runs in its own process, alternating order every round: one enqueued trial through ``hpsearch run``
(no pruner: one whole-validation evaluation per epoch), and Trainer with the same hyperparameters
(``DataCollatorForSeq2Seq`` padding labels with -100; Seq2SeqTrainer with ``predict_with_generate`` for seq2seq).
Wall time is the trial (Optuna's duration) and ``trainer.train()`` plus its evaluations, model construction
included on both sides; process start-up and tokenization excluded on both.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MODEL, REPO, RESULTS, alternate, machine, now, require, run_side, shared, trainer_arguments

TOKENIZER = MODEL
CONFIG = {"learning_rate": 3e-4, "batch_size": 32, "epochs": 1, "weight_decay": 0.01, "scheduler": "linear",
          "dropout": 0.1, "warmup_ratio": 0.0, "num_frozen_layers": 0, "seed": 0, "max_grad_norm": 1.0}
MAX_LENGTH, MAX_TARGET, NEW_TOKENS = 64, 16, 16


def build_model(task: str) -> Path:
    """The random-init model of ``task``'s family on MiniLM's tokenizer, saved once under models/."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    path = REPO / "models" / f"bench-{task}"
    if (path / "config.json").is_file():
        return path
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.eos_token = tok.sep_token  # a BERT tokenizer has no EOS; [SEP] ends texts
    import torch

    torch.manual_seed(0)
    if task == "causal_lm":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=384, intermediate_size=1536,
                                             num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                                             max_position_embeddings=256, bos_token_id=tok.cls_token_id,
                                             eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                                             tie_word_embeddings=True))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=384, d_kv=64, d_ff=1536,
                                                    num_layers=4, num_decoder_layers=4, num_heads=6,
                                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                                                    decoder_start_token_id=tok.pad_token_id))
    tok.save_pretrained(path)
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_data(task: str, n_train: int, n_dev: int) -> dict[str, Path]:
    """SST-2 rows as JSONL for ``task`` (prompt/response or source/target)."""
    src = require(shared("data/sst2/train.tsv"), "SST-2's train file", "(no flag: copy it there)")
    with open(src, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[: n_train + n_dev]
    out = {}
    for split, part in (("train", rows[:n_train]), ("dev", rows[n_train:])):
        path = Path(tempfile.gettempdir()) / f"gen_speed_{task}_{split}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for r in part:
                words = r["sentence"].split()
                row = ({"prompt": f"review: {r['sentence']} sentiment:",
                        "response": "positive" if r["label"] == "1" else "negative"} if task == "causal_lm"
                       else {"source": r["sentence"], "target": " ".join(words[:8])})
                fh.write(json.dumps(row) + "\n")
        out[split] = path
    return out


def trainer_side(a: argparse.Namespace) -> dict:
    """One Trainer (causal_lm) or Seq2SeqTrainer (seq2seq) run on the config: seconds and the validation loss."""
    import datasets
    import numpy as np
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    model_dir, files = build_model(a.task), write_data(a.task, a.n_train, a.n_dev)
    tok = AutoTokenizer.from_pretrained(model_dir)
    raw = {s: datasets.load_dataset("json", data_files=str(p), split="train") for s, p in files.items()}
    eos = tok.eos_token_id

    def enc(row):
        if a.task == "causal_lm":
            p = [t for t in tok(row["prompt"])["input_ids"] if t != eos]
            r = tok(row["response"], add_special_tokens=False)["input_ids"] + [eos]
            ids = (p + r)[:MAX_LENGTH]
            return {"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": ([-100] * len(p) + r)[:MAX_LENGTH]}
        out = tok(row["source"], truncation=True, max_length=MAX_LENGTH)
        out["labels"] = tok(text_target=row["target"], truncation=True, max_length=MAX_TARGET)["input_ids"]
        return out

    train = raw["train"].map(enc, remove_columns=raw["train"].column_names)
    dev = raw["dev"].map(enc, remove_columns=raw["dev"].column_names)

    def rouge(p):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
        preds = np.where(p.predictions < 0, tok.pad_token_id, p.predictions)
        labels = np.where(p.label_ids < 0, tok.pad_token_id, p.label_ids)
        pred = tok.batch_decode(preds, skip_special_tokens=True)
        gold = tok.batch_decode(labels, skip_special_tokens=True)
        return {"rouge1": float(np.mean([scorer.score(g, q)["rouge1"].fmeasure for g, q in zip(gold, pred)]))}

    c = CONFIG
    t0 = time.perf_counter()
    drop = {"dropout_rate": c["dropout"]} if a.task == "seq2seq" else {"attention_dropout": c["dropout"]}
    cfg = AutoConfig.from_pretrained(model_dir, **drop)
    auto = AutoModelForSeq2SeqLM if a.task == "seq2seq" else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, config=cfg)
    args = Seq2SeqTrainingArguments(
        **trainer_arguments(c, "gen_", c["seed"]), eval_strategy="epoch", predict_with_generate=a.task == "seq2seq",
        generation_max_length=None, generation_num_beams=1,
        train_sampling_strategy="group_by_length")  # the stronger anchor
    gen = {"max_new_tokens": NEW_TOKENS} if a.task == "seq2seq" else {}
    if gen:
        model.generation_config.max_new_tokens = NEW_TOKENS
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                             data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100),
                             compute_metrics=rouge if a.task == "seq2seq" else None)
    history = trainer.train()
    seconds = time.perf_counter() - t0
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    return {"seconds": seconds, "eval_loss": evals[-1]["eval_loss"], "rouge1": evals[-1].get("eval_rouge1"),
            "train_s": history.metrics.get("train_runtime")}


def hpsearch_side(a: argparse.Namespace) -> dict:
    """One `hpsearch run` trial on the config (through the CLI): Optuna's trial duration and its metrics."""
    import optuna
    import yaml

    model_dir, files = build_model(a.task), write_data(a.task, a.n_train, a.n_dev)
    work = Path(tempfile.mkdtemp(prefix="gen_hp_"))
    columns = ({"prompt_column": "prompt", "response_column": "response"} if a.task == "causal_lm"
               else {"max_target_length": MAX_TARGET, "max_new_tokens": NEW_TOKENS})
    space = {"study": {"name": "gen-speed", "pruner": "none", "sampler": {"name": "random", "seed": 0}},
             "model": {"name_or_path": str(model_dir), "max_length": MAX_LENGTH},
             "data": {"task": a.task, "train": {"path": str(files["train"])},
                      "validation": {"path": str(files["dev"])}, **columns},
             "params": {"learning_rate": {"type": "categorical", "choices": [CONFIG["learning_rate"]]}},
             "fixed": {k: v for k, v in CONFIG.items() if k != "learning_rate"}}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{work / 's.db'}"
    env = {**os.environ, "HPSEARCH_CACHE_DIR": str(work / "cache")}
    subprocess.run([sys.executable, "-m", "hpsearch", "run", "--space", str(work / "space.yaml"), "--trials", "1",
                    "--storage", storage, "--quiet"], check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=env)
    trial = optuna.load_study(study_name="gen-speed", storage=storage).trials[0]
    return {"seconds": (trial.datetime_complete - trial.datetime_start).total_seconds(),
            "eval_loss": trial.user_attrs["val_eval_loss"], "rouge1": trial.user_attrs.get("val_rouge1"),
            "train_s": trial.user_attrs["train_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["causal_lm", "seq2seq"], required=True)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-dev", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--side", choices=["hpsearch", "trainer"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps((hpsearch_side if a.side == "hpsearch" else trainer_side)(a)))
        return
    build_model(a.task)
    runs = alternate(("hpsearch", "trainer"), a.rounds,
                     lambda side, r: run_side("bench.generative_speed", side, sys.argv[1:]))
    med = {s: statistics.median(x["seconds"] for x in v) for s, v in runs.items()}
    quality = "rouge1" if a.task == "seq2seq" else "eval_loss"
    text = "\n".join([
        f"# {a.task}: per-trial time, hpsearch against {'Seq2SeqTrainer' if a.task == 'seq2seq' else 'Trainer'}", "",
        f"- date: {now()}",
        f"- machine: {machine()}",
        f"- command: `python -m bench.generative_speed {' '.join(sys.argv[1:])}`",
        f"- model: models/bench-{a.task} (random init, see the script); SST-2 rows {a.n_train} / {a.n_dev}, "
        f"max_length {MAX_LENGTH}" + (f", targets {MAX_TARGET} tokens, {NEW_TOKENS} new tokens greedy"
                                      if a.task == "seq2seq" else "") + f"; config {CONFIG}", "",
        f"| side | seconds per trial (median) | rounds | training s | {quality} |", "|---|---|---|---|---|",
        *(f"| {s} | {med[s]:.1f} | {', '.join(format(x['seconds'], '.1f') for x in runs[s])} | "
          f"{statistics.median(x['train_s'] for x in runs[s]):.1f} | "
          f"{statistics.median(x[quality] for x in runs[s]):.3f} |" for s in runs),
        "", f"**Ratio hpsearch / Trainer: {med['hpsearch'] / med['trainer']:.2f}**", ""])
    (RESULTS / f"RESULTS_{a.task}.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

"""Per-trial speed of token classification: hpsearch's loop against HF Trainer on the same config and data.

    python -m bench.ner_speed --rounds 2     # data/ner-demo, all-MiniLM-L6-v2: writes bench/results/RESULTS_ner.md

Each side runs in its own process, alternating order every round: hpsearch's objective through ``hpsearch run``
(one enqueued trial, no pruner, so one evaluation per epoch on the whole validation set, like Trainer's
``eval_strategy="epoch"``), and Trainer with ``AutoModelForTokenClassification``,
``DataCollatorForTokenClassification`` and the same hyperparameters, first-sub-token labels and seqeval metrics.
Wall time is the trial (hpsearch: Optuna's trial duration) and ``trainer.train()`` plus its evaluations (Trainer),
model construction included on both sides; process start-up and tokenization are excluded on both.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MODEL, REPO, RESULTS, alternate, machine, now, run_side, trainer_arguments

CONFIG = {"learning_rate": 1e-4, "batch_size": 32, "epochs": 1, "weight_decay": 0.01, "scheduler": "linear",
          "dropout": 0.1, "warmup_ratio": 0.0, "num_frozen_layers": 0, "seed": 0, "max_grad_norm": 1.0}


def trainer_side(a: argparse.Namespace) -> dict:
    """One Trainer run on the config: seconds for train + evaluation, and entity F1."""
    import numpy as np
    from seqeval.metrics import f1_score
    from transformers import (
        AutoConfig,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from hpsearch.finetune.data import read_conll

    tok = AutoTokenizer.from_pretrained(a.model)
    raw = {s: read_conll(Path(p), "tokens", "ner_tags") for s, p in (("train", a.train), ("dev", a.validation))}
    names = sorted({t for row in raw["train"]["ner_tags"] for t in row}, key=lambda t: (t != "O", t[2:], t))
    index = {n: i for i, n in enumerate(names)}

    def enc(batch):
        out = tok(batch["tokens"], is_split_into_words=True, truncation=True, max_length=a.max_length)
        labels = []
        for i, tags in enumerate(batch["ner_tags"]):
            prev, row = None, []
            for w in out.word_ids(i):
                row.append(-100 if w is None or w == prev else index[tags[w]])
                prev = w
            labels.append(row)
        out["labels"] = labels
        return out

    train = raw["train"].map(enc, batched=True, remove_columns=["tokens", "ner_tags"])
    dev = raw["dev"].map(enc, batched=True, remove_columns=["tokens", "ner_tags"])

    def metrics(p):
        preds = np.argmax(p.predictions, -1)
        gold, pred = [], []
        for pr, lb in zip(preds, p.label_ids):
            keep = lb != -100
            gold.append([names[i] for i in lb[keep]])
            pred.append([names[i] for i in pr[keep]])
        return {"entity_f1": f1_score(gold, pred)}

    c = CONFIG
    t0 = time.perf_counter()
    cfg = AutoConfig.from_pretrained(a.model, num_labels=len(names), hidden_dropout_prob=c["dropout"],
                                     attention_probs_dropout_prob=c["dropout"],
                                     id2label=dict(enumerate(names)), label2id=index)
    model = AutoModelForTokenClassification.from_pretrained(a.model, config=cfg)
    args = TrainingArguments(**trainer_arguments(c, "ner_", c["seed"]), eval_strategy="epoch")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorForTokenClassification(tok), compute_metrics=metrics)
    trainer.train()
    f1 = trainer.evaluate()["eval_entity_f1"]
    return {"seconds": time.perf_counter() - t0, "entity_f1": f1}


def hpsearch_side(a: argparse.Namespace) -> dict:
    """One `hpsearch run` trial on the config (through the CLI); Optuna's trial duration and entity F1."""
    import optuna
    import yaml

    work = Path(tempfile.mkdtemp(prefix="ner_hp_"))
    space = {"study": {"name": "ner-speed", "pruner": "none", "sampler": {"name": "random", "seed": 0}},
             "model": {"name_or_path": a.model, "max_length": a.max_length},
             "data": {"task": "token_classification", "train": {"path": a.train}, "validation": {"path": a.validation}},
             "params": {"learning_rate": {"type": "categorical", "choices": [CONFIG["learning_rate"]]}},
             "fixed": {k: v for k, v in CONFIG.items() if k != "learning_rate"}}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{work / 's.db'}"
    subprocess.run([sys.executable, "-m", "hpsearch", "run", "--space", str(work / "space.yaml"), "--trials", "1",
                    "--storage", storage, "--quiet"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    trial = optuna.load_study(study_name="ner-speed", storage=storage).trials[0]
    return {"seconds": (trial.datetime_complete - trial.datetime_start).total_seconds(),
            "entity_f1": trial.value, "setup_s": trial.user_attrs["setup_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=str(REPO / "data" / "ner-demo" / "train.conll"))
    ap.add_argument("--validation", default=str(REPO / "data" / "ner-demo" / "dev.conll"))
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--side", choices=["hpsearch", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "RESULTS_ner.md"))
    a = ap.parse_args()
    if a.side:
        print(json.dumps((hpsearch_side if a.side == "hpsearch" else trainer_side)(a)))
        return
    runs = alternate(("hpsearch", "trainer"), a.rounds,
                     lambda side, r: run_side("bench.ner_speed", side, sys.argv[1:]))
    med = {s: statistics.median(x["seconds"] for x in v) for s, v in runs.items()}
    f1 = {s: statistics.median(x["entity_f1"] for x in v) for s, v in runs.items()}
    text = "\n".join([
        "# Token classification: per-trial time, hpsearch against Trainer", "",
        f"- date: {now()}",
        f"- machine: {machine()}",
        f"- command: `python -m bench.ner_speed {' '.join(sys.argv[1:])}`",
        f"- data: {os.path.relpath(a.train, REPO)} / {os.path.relpath(a.validation, REPO)}, max_length {a.max_length}; "
        f"model {os.path.relpath(a.model, REPO)}; config {CONFIG}", "",
        "| side | seconds per trial (median) | rounds | entity F1 (median) |", "|---|---|---|---|",
        *(f"| {s} | {med[s]:.1f} | {', '.join(format(x['seconds'], '.1f') for x in runs[s])} | {f1[s]:.3f} |"
          for s in runs),
        "", f"**Ratio hpsearch / Trainer: {med['hpsearch'] / med['trainer']:.2f}**", ""])
    Path(a.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

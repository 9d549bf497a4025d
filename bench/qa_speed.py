"""Per-trial time and answers of extractive question answering: hpsearch against HF Trainer on the same config.

    python -m bench.qa_speed --seeds 0,1,2,3,4   # data/qa-demo, all-MiniLM-L6-v2: bench/results/RESULTS_qa.md

The Trainer side is transformers' own recipe (examples/pytorch/question-answering, ``run_qa.py`` and
``utils_qa.postprocess_qa_predictions``, ported here as written: windows padded to ``max_length`` with
``stride``, labels at the answer's tokens or CLS, n-best start and end indices paired per window, the best span over
an example's windows), ``AutoModelForQuestionAnswering`` and the same hyperparameters; both sides' answers are
scored with SQuAD's exact match and F1 (hpsearch's ``squad_scores``, whose rules the test suite checks). hpsearch
runs one enqueued trial through ``hpsearch run`` (no pruner: one evaluation, on the whole validation set, as the
Trainer side's one ``predict`` after training), in each ``model.precision`` of ``--precisions`` (Trainer: fp32).
Wall time: the trial (Optuna's trial duration) against ``trainer.train()`` plus prediction and decoding, model
construction included on both sides, tokenization excluded on both. Each side runs in its own process, once per
training seed (one epoch of a few hundred questions moves exact match by tens of points from seed to seed: compare
means over seeds), the order alternating from seed to seed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MODEL, REPO, RESULTS, alternate, machine, now, run_side, trainer_arguments, write_result

CONFIG = {"learning_rate": 2e-4, "batch_size": 16, "epochs": 1, "weight_decay": 0.01, "scheduler": "linear",
          "dropout": 0.1, "warmup_ratio": 0.0, "num_frozen_layers": 0, "seed": 0, "max_grad_norm": 1.0}
N_BEST, MAX_ANSWER = 20, 30


def _features(tok, examples, max_length: int, stride: int, train: bool):
    """``run_qa.py``'s ``prepare_train_features`` / ``prepare_validation_features``."""
    enc = tok([q.lstrip() for q in examples["question"]], examples["context"], truncation="only_second",
              max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
              padding="max_length")
    sample = enc.pop("overflow_to_sample_mapping")
    if not train:
        enc["example_id"] = []
        for i in range(len(enc["input_ids"])):
            seq = enc.sequence_ids(i)
            enc["example_id"].append(examples["id"][sample[i]])
            enc["offset_mapping"][i] = [o if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][i])]
        return enc
    offsets = enc.pop("offset_mapping")
    enc["start_positions"], enc["end_positions"] = [], []
    for i, offset in enumerate(offsets):
        ids = enc["input_ids"][i]
        cls = ids.index(tok.cls_token_id) if tok.cls_token_id in ids else 0
        seq = enc.sequence_ids(i)
        answers = examples["answers"][sample[i]]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        if not (offset[first][0] <= start_char and offset[last][1] >= end_char):
            enc["start_positions"].append(cls)
            enc["end_positions"].append(cls)
            continue
        while first < len(offset) and offset[first][0] <= start_char:
            first += 1
        enc["start_positions"].append(first - 1)
        while offset[last][1] >= end_char:
            last -= 1
        enc["end_positions"].append(last + 1)
    return enc


def _postprocess(examples, features, start_logits, end_logits, n_best: int = N_BEST,
                 max_answer: int = MAX_ANSWER) -> list[str]:
    """``utils_qa.postprocess_qa_predictions`` (SQuAD v1: no null answer): each example's best span."""
    import numpy as np

    index = {k: i for i, k in enumerate(examples["id"])}
    per_example = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        per_example[index[example_id]].append(i)
    out = []
    for e, context in enumerate(examples["context"]):
        best = None
        for f in per_example[e]:
            offsets = features[f]["offset_mapping"]
            starts = np.argsort(start_logits[f])[-1: -n_best - 1: -1].tolist()
            ends = np.argsort(end_logits[f])[-1: -n_best - 1: -1].tolist()
            for s in starts:
                for t in ends:
                    if s >= len(offsets) or t >= len(offsets) or offsets[s] is None or offsets[t] is None:
                        continue
                    if t < s or t - s + 1 > max_answer:
                        continue
                    score = start_logits[f][s] + end_logits[f][t]
                    if best is None or score > best[0]:
                        best = (score, context[offsets[s][0]:offsets[t][1]])
        out.append(best[1] if best else "")
    return out


def trainer_side(a: argparse.Namespace) -> dict:
    """One Trainer run on the config: seconds for training, prediction and decoding; exact match and F1."""
    import datasets
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from hpsearch.tasks.question_answering import squad_scores, stride_for

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(a.model)
    raw = {s: datasets.load_dataset("json", data_files=p, split="train") for s, p in (("train", a.train),
                                                                                    ("dev", a.validation))}
    stride = stride_for({"doc_stride": "auto"}, a.max_length)  # the same windows on both sides
    train = raw["train"].map(lambda b: _features(tok, b, a.max_length, stride, True), batched=True,
                             remove_columns=raw["train"].column_names)
    dev = raw["dev"].map(lambda b: _features(tok, b, a.max_length, stride, False), batched=True,
                         remove_columns=raw["dev"].column_names)
    c = CONFIG
    t0 = time.perf_counter()
    set_seed(a.seed)  # before the model, as run_qa.py: the new span head's initialization follows the seed
    cfg = AutoConfig.from_pretrained(a.model, hidden_dropout_prob=c["dropout"],
                                     attention_probs_dropout_prob=c["dropout"])
    model = AutoModelForQuestionAnswering.from_pretrained(a.model, config=cfg)
    args = TrainingArguments(**trainer_arguments(c, "qa_", a.seed), eval_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator)
    trainer.train()
    start, end = trainer.predict(dev.remove_columns(["example_id", "offset_mapping"])).predictions
    predicted = _postprocess(raw["dev"], dev, start, end)
    seconds = time.perf_counter() - t0
    scores = squad_scores(predicted, [r["text"] for r in raw["dev"]["answers"]])
    return {"seconds": seconds, **scores, "windows": len(dev)}


def hpsearch_side(a: argparse.Namespace) -> dict:
    """One `hpsearch run` trial on the config (through the CLI); Optuna's trial duration, exact match and F1."""
    import optuna
    import yaml

    work = Path(tempfile.mkdtemp(prefix="qa_hp_"))
    space = {"study": {"name": "qa-speed", "pruner": "none", "sampler": {"name": "random", "seed": 0}},
             "model": {"name_or_path": a.model, "max_length": a.max_length, "precision": a.precision},
             "data": {"task": "question_answering", "train": {"path": a.train}, "validation": {"path": a.validation},
                      "answers_column": "answers", "n_best": N_BEST, "max_answer_length": MAX_ANSWER},
             "params": {"learning_rate": {"type": "categorical", "choices": [CONFIG["learning_rate"]]}},
             "fixed": {**{k: v for k, v in CONFIG.items() if k != "learning_rate"}, "seed": a.seed}}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{work / 's.db'}"
    subprocess.run([sys.executable, "-m", "hpsearch", "run", "--space", str(work / "space.yaml"), "--trials", "1",
                    "--storage", storage, "--quiet", "--device", a.device], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    trial = optuna.load_study(study_name="qa-speed", storage=storage).trials[0]
    return {"seconds": (trial.datetime_complete - trial.datetime_start).total_seconds(),
            "exact_match": trial.user_attrs["val_exact_match"], "f1": trial.user_attrs["val_f1"],
            "precision": trial.user_attrs["precision"]}


def _mean_se(values: list[float]) -> str:
    mean = statistics.mean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return f"{mean:.1f} ± {se:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=str(REPO / "data" / "qa-demo" / "train.jsonl"))
    ap.add_argument("--validation", default=str(REPO / "data" / "qa-demo" / "dev.jsonl"))
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="training seeds: each side trains once per seed")
    ap.add_argument("--precisions", default="fp32,auto", help="hpsearch's model.precision values to run")
    ap.add_argument("--device", default="auto", help="hpsearch's --device (Trainer takes the GPU when there is one)")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "RESULTS_qa.md"))
    a = ap.parse_args()
    if a.side:
        print(json.dumps((trainer_side if a.side == "trainer" else hpsearch_side)(a)))
        return
    seeds = [int(x) for x in a.seeds.split(",")]
    sides = [f"hpsearch {p}" for p in a.precisions.split(",")] + ["trainer"]

    def one(side: str, r: int) -> dict:
        extra = ["--precision", side.split()[1]] if side != "trainer" else []
        return run_side("bench.qa_speed", side.split()[0], [*sys.argv[1:], "--seed", str(seeds[r]), *extra])

    runs = alternate(sides, len(seeds), one)
    med = {s: statistics.median(x["seconds"] for x in v) for s, v in runs.items()}
    rows = []
    for s, v in runs.items():
        name = f"hpsearch, {v[0]['precision']}" if s != "trainer" else "Trainer, fp32"
        rows.append(f"| {name} | {med[s]:.1f} | {', '.join(format(x['seconds'], '.1f') for x in v)} | "
                    f"{_mean_se([x['exact_match'] for x in v])} | {_mean_se([x['f1'] for x in v])} | "
                    f"{', '.join(format(x['exact_match'], '.0f') for x in v)} |")
    ratios = [f"{s.split()[1]} {med[s] / med['trainer']:.2f}" for s in sides if s != "trainer"]
    lines = [
        "# Question answering: per-trial time and answers, hpsearch against Trainer", "",
        f"- date: {now()}",
        f"- machine: {machine()}",
        f"- command: `python -m bench.qa_speed {' '.join(sys.argv[1:])}`",
        f"- data: {os.path.relpath(a.train, REPO)} / {os.path.relpath(a.validation, REPO)}, max_length "
        f"{a.max_length} (doc_stride auto: the same windows on both sides; {runs['trainer'][0]['windows']} "
        f"validation windows), n-best {N_BEST}, max answer {MAX_ANSWER} tokens; model "
        f"{os.path.relpath(a.model, REPO)}; config { {k: v for k, v in CONFIG.items() if k != 'seed'} }; "
        f"training seeds {a.seeds}", "",
        "| side | seconds per trial (median) | per seed | exact match (mean ± SE over seeds) | F1 | exact match "
        "per seed |", "|---|---|---|---|---|---|", *rows,
        "", f"**Time ratio hpsearch / Trainer: {', '.join(ratios)}**", ""]
    write_result(a.out, lines, runs, "qa_speed.json")


if __name__ == "__main__":
    main()

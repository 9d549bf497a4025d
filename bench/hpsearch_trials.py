"""Run enqueued configs through hpsearch's own objective, in one process, as `hpsearch run` would.

Takes the anchor's configs format (Trainer argument names) and writes a JSON result comparable to
trainer_baseline.py's: per-trial wall time, accuracy, setup before the first training step, tokens/s.
Usage: python -m bench.hpsearch_trials --train TSV --eval TSV --model DIR --configs JSON --out JSON
       [--n-train N] [--n-eval N] [--max-length L] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ANCHOR_NAMES = {"per_device_train_batch_size": "batch_size", "num_train_epochs": "epochs",
                "lr_scheduler_type": "scheduler"}
"""Trainer argument names in the anchor's configs, and the hpsearch hyperparameter each one is."""


def space_for(args: argparse.Namespace, configs: list[dict]) -> dict:
    """A space whose params admit every config, with the configs enqueued, matching the anchor's settings."""
    converted = [{ANCHOR_NAMES.get(k, k): v for k, v in c.items()} for c in configs]
    params = {}
    for name in converted[0]:
        values = sorted({c[name] for c in converted}, key=str)
        params[name] = {"type": "categorical", "choices": values}
    return {
        # Like the anchor: no pruner, so one evaluation per epoch (the default without a pruner), on the whole
        # validation set every time (the anchor's eval_strategy="epoch").
        "study": {"name": "bench", "metric": "accuracy", "sampler": {"name": "random", "seed": 0},
                  "pruner": {"name": "none"}, "intermediate_eval_samples": args.n_eval, "enqueue": converted},
        "model": {"name_or_path": args.model, "max_length": args.max_length},
        "data": {"task": "classification", "label_column": "label",
                 "train": {"path": args.train, "format": "tsv", "text_column": header(args.train)[1]},
                 "validation": {"path": args.eval, "format": "tsv", "text_column": header(args.eval)[1]},
                 "max_train_samples": args.n_train, "max_eval_samples": args.n_eval},
        "params": params,
        "fixed": {"seed": 0, "warmup_ratio": 0.0, "max_grad_norm": 1.0},
    }


def as_anchor_runs(config: dict) -> dict:
    """What trainer_baseline.py really trains under transformers 5: Trainer.train() calls model_init(trial)
    before hp_space(trial) has suggested anything, so model_init sees empty trial.params and falls back to
    dropout 0.1 and no frozen layers for every trial (the other five values do reach TrainingArguments)."""
    return {**config, "dropout": 0.1, "num_frozen_layers": 0}


def header(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\n").split("\t")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--configs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--as-anchor-runs", action="store_true",
                    help="run each config as the anchor really executes it: dropout 0.1, no frozen layers")
    a = ap.parse_args()
    t0 = time.perf_counter()
    import optuna

    from hpsearch.config.files import apply_overrides
    from hpsearch.config.validation import validate
    from hpsearch.study.objective import Objective
    from hpsearch.study.progress import Progress
    from hpsearch.study.runner import open_study, prepare_run

    configs = json.load(open(a.configs))
    if a.as_anchor_runs:
        configs = [as_anchor_runs(c) for c in configs]
    raw = apply_overrides(space_for(a, configs), a.overrides)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(raw, fh)
    space = validate(raw, fh.name)
    prepared = prepare_run(space, "auto")  # exactly what `hpsearch run` does before its first trial
    device, data = prepared.device, prepared.data
    study = open_study(optuna.storages.InMemoryStorage(), "bench", space, warn=lambda m: None)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    study.optimize(Objective(space, prepared, Progress()), n_trials=len(configs))
    total = time.perf_counter() - t1
    trials = study.trials
    res = {
        "setup_s": setup, "search_s": total, "per_trial_s": total / len(configs), "device": str(device),
        "values": [t.value for t in trials], "params": [t.params for t in trials],
        "durations_s": [t.duration.total_seconds() for t in trials],
        "trial_setup_s": [t.user_attrs.get("setup_time_s") for t in trials],
        "tokens_per_s": [t.user_attrs.get("tokens_per_s") for t in trials],
        "train_time_s": [t.user_attrs.get("train_time_s") for t in trials],
        "eval_time_s": [t.user_attrs.get("eval_time_s") for t in trials],
        "train_tokens": int(data.train.lengths.sum()), "eval_tokens": int(data.validation.lengths.sum()),
    }
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("setup_s", "per_trial_s", "values")}), file=sys.stderr)


if __name__ == "__main__":
    main()

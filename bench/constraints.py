"""How fast the sampler stops proposing an infeasible region once ``study.constraints`` marks it, against the same
search without the constraint (where the region is merely the best-scoring one).

    python -m bench.constraints --seeds 0,1,2 --out bench/results/CONSTRAINTS.md

Only the sampler is measured: training is replaced by a deterministic stand-in (score rises with the batch size;
what the constraint bounds, the trainable parameters here, grows with it, so batch sizes 64 and 128 break the
bound), the same one ``tests/study/test_constraints.py`` uses. 30 trials per study, TPE as the space sets it.
"""
from __future__ import annotations

import argparse
import math
import sys
from types import SimpleNamespace
from typing import Any

from bench.common import RESULTS, machine, now, write_result

BOUND = "trainable_parameters <= 40000"


def study_with(constraints: list[str], seed: int, trials: int) -> list[tuple[int, bool]]:
    """(batch size, infeasible) of each trial of one study."""
    import optuna
    import torch

    from hpsearch.config.validation import validate
    from hpsearch.finetune.precision import FP32
    from hpsearch.finetune.recipe import Prepared
    from hpsearch.finetune.state import TrainingState
    from hpsearch.study import objective as O
    from hpsearch.study.samplers import build_sampler

    def fine_tune(space: Any, hp: dict, prepared: Any, callback: Any = None, group: Any = None) -> Any:
        callback.on_step(TrainingState(total_steps=1, train_examples=1, reports_per_epoch=1,
                                       trainable_parameters=hp.batch_size * 1000))
        value = 0.9 - 0.05 * abs(math.log10(hp.learning_rate) + 3.5) + hp.batch_size / 1000
        return None, SimpleNamespace(metrics={"accuracy": value}, selection={})

    O.fine_tune = fine_tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = {"study": {"name": "c", "metric": "accuracy", "sampler": {"name": "tpe", "seed": seed},
                     "pruner": "none", "constraints": constraints},
           "model": {"name_or_path": "org/model"},
           "data": {"task": "classification", "train": {"hub": "x"}, "validation": {"hub": "x"}},
           "params": {"batch_size": {"type": "categorical", "choices": [8, 16, 32, 64, 128]},
                      "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}}
    space = validate(raw)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(space))
    study.optimize(O.Objective(space, Prepared(torch.device("cpu"), None, FP32)), n_trials=trials)
    return [(t.params["batch_size"], t.params["batch_size"] >= 64) for t in study.trials]


def after_first(rows: list[tuple[int, bool]]) -> int:
    """Infeasible proposals after the first infeasible trial."""
    first = next((i for i, (_, bad) in enumerate(rows) if bad), len(rows))
    return sum(bad for _, bad in rows[first + 1:])


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "CONSTRAINTS.md"))
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for seed in seeds:
        with_c, without = study_with([BOUND], seed, a.trials), study_with([], seed, a.trials)
        rows.append({"seed": seed, "constrained": with_c, "unconstrained": without})
    lines = ["# Constraints: infeasible proposals", "", f"- date: {now()}", f"- machine: {machine()}",
             f"- command: `python -m bench.constraints {' '.join(argv)}`", f"- bound: `{BOUND}` (batch sizes 64 and "
             "128 break it); 30 trials of TPE, the first 10 random", "",
             "| sampler seed | infeasible after the first violation: constrained | unconstrained | "
             "infeasible in trials 11-30: constrained | unconstrained |", "|---|---|---|---|---|"]
    for r in rows:
        c, u = r["constrained"], r["unconstrained"]
        lines.append(f"| {r['seed']} | {after_first(c)} | {after_first(u)} | {sum(b for _, b in c[10:])} | "
                     f"{sum(b for _, b in u[10:])} |")
    write_result(a.out, lines, rows, "constraints.json")


if __name__ == "__main__":
    main()

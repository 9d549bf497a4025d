"""Trials per hour with K MiniLM / SST-2 trials packed on one GPU (K = 1, 2, 4, 8) against one at a time.

    python -m bench.packing --out bench/results/PACKING.md    # on a GPU machine: --trials-per-gpu K
    python -m bench.packing --reduced --out /tmp/packing.md   # toy sizes; on the CPU, --workers K per core

Every K runs the same 16 configs (a grid: learning rate x batch size x dropout; no pruning, so every trial does
the same work) as one fresh study with ``hpsearch run --trials-per-gpu K`` (on the CPU, ``--workers K`` for K up
to the core count, so the script is known to run). Two rates: trials per hour over the whole command (worker
start-up included: what a user waits for) and in steady state (first trial's start to last trial's end, from the
study). The best config and value of each K are compared: packing must not change what the search finds (every
trial has the same fixed seed, so a config's value differs only by GPU non-determinism).

The model is MiniLM-shaped (6 layers, hidden 384) with random weights (:func:`bench.gpu.save_bert`: nothing can be
downloaded on the lent GPU machines); speed does not depend on the values. On those machines, carry the wheels as
``bench/gpu.py``'s docstring says and run it the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS, machine, now, raw_path
from bench.gpu import SST2, save_bert

GRID = {"learning_rate": [5e-5, 1e-4, 2e-4, 4e-4], "batch_size": [16, 32], "dropout": [0.0, 0.1]}
"""16 configs; reduced: the first two values of learning rate and dropout (4 configs)."""


def space(model: Path, reduced: bool) -> dict[str, Any]:
    """The study every K runs: a grid over :data:`GRID`, one epoch, no pruner."""
    grid = {k: v[:2] for k, v in GRID.items() if k != "batch_size"} if reduced else GRID
    params = {k: {"type": "categorical", "choices": v} for k, v in grid.items()}
    return {
        "study": {"name": "packing", "metric": "accuracy", "sampler": {"name": "grid"}, "pruner": "none",
                  "reports_per_epoch": 1},
        "model": {"name_or_path": str(model), "max_length": 64},
        "data": {"task": "classification", "label_column": "label",
                 "train": {"path": str(SST2 / "train.tsv"), "text_column": "sentence"},
                 "validation": {"path": str(SST2 / "dev.tsv"), "text_column": "content"},
                 "max_train_samples": 256 if reduced else 2000, "max_eval_samples": 64 if reduced else 872},
        "params": params,
        "fixed": {"epochs": 1, "seed": 42, **({"batch_size": 32} if reduced else {})},
    }


def grid_size(raw: dict[str, Any]) -> int:
    size = 1
    for spec in raw["params"].values():
        size *= len(spec["choices"])
    return size


def run_k(k: int, gpu: bool, space_file: Path, trials: int, work: Path) -> dict[str, Any]:
    """One study of ``trials`` trials with K packed workers; its rates, best and trials."""
    placement = ["--trials-per-gpu", str(k)] if gpu else ["--workers", str(k)]
    return run_study(k, f"packing-k{k}", space_file, trials, work, placement)


def run_study(k: int, name: str, space_file: Path, trials: int, work: Path, flags: list[str]) -> dict[str, Any]:
    """``hpsearch run`` of ``trials`` trials with ``flags`` as a fresh study ``name``: its rates (over the whole
    command and in steady state), its best and every config's value."""
    import optuna

    log = work / f"{name}.log"
    cmd = [sys.executable, "-m", "hpsearch", "run", "--space", str(space_file), "--trials", str(trials),
           "--storage", f"journal:///{log}", "--study-name", name, "--quiet", *flags]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"K={k} exited {done.returncode}: {done.stderr[-2000:]}")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    study = optuna.load_study(study_name=name, storage=storage)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    start = min(t.datetime_start for t in finished)
    end = max(t.datetime_complete for t in finished)
    steady = (end - start).total_seconds()
    best = max(finished, key=lambda t: t.value)
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished]
    return {"k": k, "trials": len(finished), "states": sorted({t.state.name for t in study.trials}),
            "wall_s": round(wall, 1), "steady_s": round(steady, 1),
            "per_hour_wall": round(len(finished) / wall * 3600),
            "per_hour_steady": round(len(finished) / steady * 3600),
            "mean_trial_s": round(sum(per_trial) / len(per_trial), 2),
            "peak_memory_mb": max(t.user_attrs.get("peak_memory_mb", 0.0) for t in finished),
            "best_value": round(best.value, 4), "best_params": best.params,
            "values": {json.dumps(t.params, sort_keys=True): round(t.value, 4) for t in finished}}


def rate_cells(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    """A run's first table cells: K, trials, wall seconds, both rates each with its ratio to K = 1's, mean trial s."""
    wall_x = f"{r['per_hour_wall'] / base['per_hour_wall']:.2f}" if base else "-"
    steady_x = f"{r['per_hour_steady'] / base['per_hour_steady']:.2f}" if base else "-"
    return (f"| {r['k']} | {r['trials']} | {r['wall_s']} | {r['per_hour_wall']} | {wall_x} | "
            f"{r['per_hour_steady']} | {steady_x} | {r['mean_trial_s']} |")


def ks_for(gpu: bool, reduced: bool) -> list[int]:
    """1, 2, 4, 8 packed on a GPU; on the CPU, 1 up to the core count (workers per core), doubling."""
    if gpu:
        return [1, 2] if reduced else [1, 2, 4, 8]
    cores = os.cpu_count() or 1
    return [k for k in (1, 2, 4, 8) if k <= max(1, cores)]


def report(results: dict[str, Any], argv: list[str]) -> str:
    rows = results["runs"]
    base = next((r for r in rows if r.get("k") == 1 and "failed" not in r), None)
    flag = "--trials-per-gpu" if results["gpu"] else "--workers"
    reduced = " (reduced, toy sizes)" if results["reduced"] else ""
    lines = [f"# Packing trials on one {'GPU' if results['gpu'] else 'CPU'}{reduced}",
             "", f"- date: {results['date']}", f"- machine: {results['machine']}",
             f"- command: `python -m bench.packing {' '.join(argv)}`", f"- raw: `{results['raw']}`",
             f"- each K: a fresh study of the same {results['grid']} configs (grid, no pruning, seed 42), "
             f"`hpsearch run {flag} K`; wall = the whole command, worker start-up included; steady = first trial's "
             "start to last trial's end", "",
             "| K | trials | wall s | trials/h (wall) | x K=1 | trials/h (steady) | x K=1 | mean trial s | "
             "peak MB/trial | best value | best config |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['k']} | failed: {r['failed'][:200]} |" + " |" * 9)
            continue
        params = ", ".join(f"{k}={v:g}" for k, v in sorted(r["best_params"].items()))
        lines.append(f"{rate_cells(r, base)} {r['peak_memory_mb']:.0f} | {r['best_value']} | {params} |")
    if base:
        spread = [max(abs(v - base["values"].get(c, v)) for c, v in r["values"].items())
                  for r in rows if "failed" not in r]
        lines += ["", f"Largest difference of one config's value from K=1's across K: {max(spread):.4f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="toy model and data, K = 1, 2 (a test's run)")
    ap.add_argument("--out", default=str(RESULTS / "PACKING.md"))
    ap.add_argument("--json", default=None, help="raw results (default: bench/results/raw/packing.json, or beside "
                                                 "--out)")
    a = ap.parse_args(argv)
    import torch

    from hpsearch.config.validation import validate
    from hpsearch.finetune.recipe import tokenize

    gpu = torch.cuda.is_available()
    out = Path(a.out)
    raw_file = Path(a.json) if a.json else raw_path(out, "packing.json")
    results: dict[str, Any] = {"date": now(), "machine": machine(), "gpu": gpu, "reduced": a.reduced,
                               "raw": raw_file.name, "runs": []}
    with tempfile.TemporaryDirectory(prefix="hpsearch-packing-") as tmp:
        work = Path(tmp)
        os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")
        raw = space(save_bert(work / "minilm", a.reduced), a.reduced)
        results["grid"] = grid_size(raw)
        space_file = work / "packing.yaml"
        space_file.write_text(json.dumps(raw))  # JSON is YAML
        tokenize(validate(raw))  # the data cache every K starts from
        for k in ks_for(gpu, a.reduced):
            try:
                row = run_k(k, gpu, space_file, results["grid"], work)
            except Exception as exc:  # report and go on: a GPU run should bring back all it can
                row = {"k": k, "failed": f"{type(exc).__name__}: {exc}"}
            results["runs"].append(row)
            print(f"[packing] {json.dumps({k: v for k, v in row.items() if k != 'values'})}", file=sys.stderr,
                  flush=True)
    raw_file.parent.mkdir(parents=True, exist_ok=True)
    raw_file.write_text(json.dumps(results, indent=1))
    out.write_text(report(results, argv), encoding="utf-8")
    print(out.read_text())


if __name__ == "__main__":
    main()

"""The speed benchmark: hpsearch's objective against HF Trainer.hyperparameter_search on identical trials.

One run, one machine, alternating: each round runs hpsearch, the default anchor and the grouped anchor
(`--group-by-length`), in an order that flips every round, each in a fresh process. Writes a Markdown
report (per config: wall time, accuracy, ratio to each anchor, setup before the first training step,
tokens per second, and the machine).

    python bench/run.py --configs ../shared/bench/configs_small.json --out bench/RESULTS.md

The anchor script is run unchanged from --anchor (default ../shared/bench/trainer_baseline.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def machine() -> str:
    """CPU model and cores, GPU name if any, torch version: enough to know what the numbers belong to."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def run_one(kind: str, a: argparse.Namespace, out: Path) -> dict:
    common = ["--train", a.train, "--eval", a.eval, "--model", a.model, "--n-train", str(a.n_train),
              "--n-eval", str(a.n_eval), "--configs", a.configs, "--out", str(out)]
    if kind == "hpsearch":
        cmd = [sys.executable, str(HERE / "hpsearch_trials.py"), *common, "--max-length", str(a.max_length)]
        for s in a.set:
            cmd += ["--set", s]
    else:
        cmd = [sys.executable, a.anchor, *common, "--max-length", str(a.max_length)]
        if kind == "grouped":
            cmd.append("--group-by-length")
    print(f"[bench] {kind}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(ROOT.parent / "shared/bench/configs_small.json"))
    ap.add_argument("--anchor", default=str(ROOT.parent / "shared/bench/trainer_baseline.py"))
    ap.add_argument("--train", default=str(ROOT / "data/sst2/train.tsv"))
    ap.add_argument("--eval", default=str(ROOT / "data/sst2/dev.tsv"))
    ap.add_argument("--model", default=str(ROOT / "models/all-MiniLM-L6-v2"))
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of (hpsearch, anchor, grouped anchor)")
    ap.add_argument("--kinds", default="hpsearch,default,grouped", help="which systems to run")
    ap.add_argument("--set", action="append", default=[], help="space override for the hpsearch side")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    a = ap.parse_args()

    kinds = a.kinds.split(",")
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for kind in order:
                results[kind].append(run_one(kind, a, Path(tmp) / f"{kind}-{r}.json"))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    Path(a.out).write_text(report(a, results))
    print(Path(a.out).read_text())


def _per_config(runs: list[dict], key: str, i: int) -> float:
    return statistics.median(run[key][i] for run in runs)


def report(a: argparse.Namespace, results: dict[str, list[dict]]) -> str:
    configs = json.loads(Path(a.configs).read_text())
    hp = results.get("hpsearch", [])
    lines = [
        "# Benchmark: hpsearch vs Trainer.hyperparameter_search",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- device used by hpsearch: {hp[0]['device'] if hp else '-'}",
        f"- task: SST-2, {a.n_train} train / {a.n_eval} eval examples, max_length {a.max_length}, "
        f"model {Path(a.model).name}",
        f"- configs: `{a.configs}` ({len(configs)} configs), {a.rounds} round(s), order alternating per round",
        f"- command: `python bench/run.py --configs {a.configs}"
        + (f" --rounds {a.rounds}" if a.rounds != 1 else "") + "".join(f" --set {s}" for s in a.set) + "`",
        "",
        "Wall time is Optuna's trial duration (model construction, training, every evaluation); medians over rounds.",
        "",
        "| config | hpsearch s | acc | default anchor s | acc | grouped anchor s | acc | ratio vs default | "
        "ratio vs grouped | hpsearch setup s (% of trial) | hpsearch train tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios_d, ratios_g, setups = [], [], []
    for i, c in enumerate(configs):
        row = [f"{i}: " + ", ".join(f"{k.split('_')[-1] if k.startswith(('per_', 'num_')) else k}={v}"
                                    for k, v in c.items())]
        vals = {}
        for kind in ("hpsearch", "default", "grouped"):
            runs = results.get(kind, [])
            if runs:
                vals[kind] = (_per_config(runs, "durations_s", i), _per_config(runs, "values", i))
                row += [f"{vals[kind][0]:.1f}", f"{vals[kind][1]:.3f}"]
            else:
                row += ["-", "-"]
        for kind, acc in (("default", ratios_d), ("grouped", ratios_g)):
            if "hpsearch" in vals and kind in vals:
                acc.append(vals["hpsearch"][0] / vals[kind][0])
                row.append(f"{acc[-1]:.2f}")
            else:
                row.append("-")
        if hp:
            setup = _per_config(hp, "trial_setup_s", i)
            setups.append(setup / vals["hpsearch"][0])
            row += [f"{setup:.2f} ({100 * setups[-1]:.1f} %)", f"{_per_config(hp, 'tokens_per_s', i):,.0f}"]
        else:
            row += ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if ratios_d:
        lines.append(f"**Median ratio vs default anchor: {statistics.median(ratios_d):.2f}** (target <= 0.33 on the CPU,"
                     " <= 0.25 on a GPU)")
    if ratios_g:
        lines.append(f"**Median ratio vs grouped anchor: {statistics.median(ratios_g):.2f}** (target <= 0.65)")
    if setups:
        lines.append(f"**Median per-trial setup: {100 * statistics.median(setups):.1f} % of the trial** (target <= 3 %)")
    if hp:
        lines.append(f"\nhpsearch process setup (imports, weights read once, tokenized data from cache): "
                     f"{statistics.median(r['setup_s'] for r in hp):.1f} s, paid once per worker, not per trial.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""How much validation accuracy moves with the seed alone, for hpsearch and for the anchor: the yardstick for
"equal accuracy". Analysis only; the benchmark proper is bench/run.py, which runs the anchor unchanged.

    python -m bench.seed_spread --seeds 0,1,2,3,4 --anchor-seeds 1,2,3 --out bench/results/SEEDS.md

The anchor fixes ``seed=0`` in its TrainingArguments; for the other seeds this script runs a copy of it in a
temporary directory in which that one literal is replaced (and nothing else: the script checks the copy differs
from the original in that one place). hpsearch runs its objective as the anchor really runs the configs
(``python -m bench.hpsearch_trials --as-anchor-runs``) with ``--set fixed.seed=N``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, run_json
from bench.run import add_task_arguments, check_task_arguments

SEED_LITERAL = "seed=0)"


def anchor_with_seed(anchor: Path, seed: int, tmp: Path) -> Path:
    """A copy of the anchor script whose TrainingArguments use ``seed``; refuses if the literal is not there once."""
    text = anchor.read_text()
    if text.count(SEED_LITERAL) != 1:
        raise SystemExit(f"{anchor}: expected exactly one {SEED_LITERAL!r}; the anchor changed, update this script")
    out = tmp / f"anchor_seed{seed}.py"
    out.write_text(text.replace(SEED_LITERAL, f"seed={seed})"))
    return out


def run(cmd: list[str], out: Path) -> dict:
    print("[seeds]", " ".join(cmd), file=sys.stderr, flush=True)
    return run_json(cmd, out, quiet=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(ap)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="hpsearch trial seeds")
    ap.add_argument("--anchor-seeds", default="1,2,3", help="anchor seeds besides its own 0 (taken from --results)")
    ap.add_argument("--kinds", default="default,grouped", help="anchor variants to re-seed")
    ap.add_argument("--results", default=None, help="bench/run.py --json output: its seed-0 anchor runs are reused")
    ap.add_argument("--out", default=str(RESULTS / "SEEDS.md"))
    a = ap.parse_args()
    check_task_arguments(a)
    common = ["--train", a.train, "--eval", a.eval, "--model", a.model, "--configs", a.configs]
    configs = json.loads(Path(a.configs).read_text())
    values: dict[str, dict[int, list[float]]] = {"hpsearch": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for seed in [int(s) for s in a.seeds.split(",")]:
            out = tmp / f"hpsearch-{seed}.json"
            values["hpsearch"][seed] = run([sys.executable, "-m", "bench.hpsearch_trials", *common, "--out", str(out),
                                            "--as-anchor-runs", "--set", f"fixed.seed={seed}"], out)["values"]
        for kind in a.kinds.split(","):
            values[kind] = {}
            if a.results:
                for r in json.loads(Path(a.results).read_text()).get(kind, []):
                    values[kind].setdefault(0, r["values"])
            for seed in [int(s) for s in a.anchor_seeds.split(",") if s]:
                out = tmp / f"{kind}-{seed}.json"
                script = anchor_with_seed(Path(a.anchor), seed, tmp)
                extra = ["--group-by-length"] if kind == "grouped" else []
                cmd = [sys.executable, str(script), *common, "--out", str(out), *extra]
                values[kind][seed] = run(cmd, out)["values"]
    lines = ["# Accuracy spread over seeds (hpsearch vs the anchor)", "",
             f"Command: `python -m bench.seed_spread --configs {a.configs} --seeds {a.seeds} --anchor-seeds "
             f"{a.anchor_seeds}" + (f" --results {a.results}" if a.results else "") + f" --out {a.out}`; "
             "hpsearch runs the "
             "configs as the anchor really runs them (dropout 0.1, nothing frozen). Accuracy on the 500 validation "
             "examples; one example is 0.2 points.", "",
             "| config | system | accuracy per seed | mean | sd (pts) |", "|---|---|---|---|---|"]
    for i in range(len(configs)):
        for system, per_seed in values.items():
            accs = [v[i] for _, v in sorted(per_seed.items())]
            if not accs:
                continue
            sd = 100 * statistics.stdev(accs) if len(accs) > 1 else float("nan")
            cells = ", ".join(f"{s}: {v[i]:.3f}" for s, v in sorted(per_seed.items()))
            lines.append(f"| {i} | {system} | {cells} | {statistics.mean(accs):.3f} | {sd:.1f} |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()

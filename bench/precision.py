"""Accuracy by precision on the demo: the demo's first config retrained with several training seeds in each
precision, mean accuracy and its standard error (training seeds and the binomial error of the validation rows).

    python -m bench.precision --seeds 0,1,2 --precisions fp32,bf16      # writes bench/results/PRECISION.md

The claim it checks: mixed bf16 with fp32 master weights (``precision: bf16``) matches fp32 accuracy within one
standard error. On a CPU without AVX512-BF16 or AMX, bf16 is emulated: slow, and not what ``auto`` picks there, but
the arithmetic is the same as on a GPU's bf16.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from bench.common import MODEL, REPO, RESULTS, machine, now, raw_path, require


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(REPO / "search_spaces" / "lr_dropout.yaml"))
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(RESULTS / "PRECISION.md"))
    a = ap.parse_args(argv)
    require(a.model, "the model (make models)", "--model")
    from hpsearch.config.load import load_space
    from hpsearch.finetune.recipe import fine_tune, prepare

    rows: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    n_eval = 0
    for precision in a.precisions.split(","):
        space = load_space(a.space, [f"model.name_or_path={a.model}", f"model.precision={precision}",
                                     "study.pruner=none", *a.overrides])
        first = space.study.enqueue[0] if space.study.enqueue else {}
        prepared = prepare(space, "cpu")
        n_eval = len(prepared.data.validation)
        rows[precision], t0 = [], time.perf_counter()
        for seed in (int(s) for s in a.seeds.split(",")):
            run = space.with_params({**first, "seed": seed})
            _, result = fine_tune(run, dict(run.fixed), prepared)
            rows[precision].append(result.metrics["accuracy"])
            print(f"[precision] {precision} seed {seed}: {rows[precision][-1]:.3f}", file=sys.stderr, flush=True)
        seconds[precision] = (time.perf_counter() - t0) / len(rows[precision])

    def mean_se(values: list[float]) -> tuple[float, float]:
        m = statistics.fmean(values)
        spread = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
        return m, math.sqrt(spread + m * (1 - m) / n_eval)

    base = a.precisions.split(",")[0]
    lines = ["# Accuracy by precision on the demo", "", f"- date: {now()}", f"- machine: {machine()}",
             f"- command: `python -m bench.precision {' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"- space: the demo (`{Path(a.space).name}`), its enqueued config, {n_eval} validation rows, training "
             f"seeds {a.seeds}; standard error from the seeds' spread and the binomial error of the rows", "",
             f"| precision | accuracy per seed | mean ± SE | s per training | diff from {base} (pts) | within 1 SE |",
             "|---|---|---|---|---|---|"]
    mb, sb = mean_se(rows[base])
    for precision, values in rows.items():
        m, s = mean_se(values)
        se = math.sqrt(s**2 + sb**2)
        lines.append(f"| {precision} | {', '.join(f'{v:.3f}' for v in values)} | {m:.3f} ± {s:.3f} | "
                     f"{seconds[precision]:.1f} | {100 * (m - mb):+.1f} | {'yes' if abs(m - mb) <= se else 'no'} |")
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = Path(a.out)
    raw = raw_path(out, "precision.json")
    raw.write_text(json.dumps({"rows": rows, "seconds": seconds, "n_eval": n_eval}, indent=1))
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()

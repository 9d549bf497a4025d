"""A two-objective study (accuracy, inference latency) on the demo's MiniLM / SST-2: its Pareto front, the report's
front figure, and each front member exported with ``export --pareto`` and retrained, against its stored accuracy.

    python -m bench.pareto --trials 12 --out bench/results/PARETO.md

The target (issue 28): every retrained front config within one standard error (sqrt(p (1 - p) / n) over the
validation rows) of the accuracy its trial recorded.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, RESULTS, machine, now, write_result


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--space", default=str(REPO / "search_spaces" / "lr_dropout.yaml"))
    ap.add_argument("--second", default="latency_ms", help="the second objective (latency_ms, train_time_s, ...)")
    ap.add_argument("--batch-sizes", default=None, help="also search the batch size over these, e.g. 8,16,32,64")
    ap.add_argument("--out", default=str(RESULTS / "PARETO.md"))
    a = ap.parse_args(argv)
    import hpsearch
    from hpsearch.outputs.report import write_report
    from hpsearch.study import record

    overrides = {"study.metric": None, "study.metrics": ["accuracy", a.second], "study.pruner": None,
                 "study.enqueue": None, "study.name": "pareto"}
    if a.batch_sizes:
        overrides.update({"params.batch_size": {"type": "categorical",
                                                "choices": [int(b) for b in a.batch_sizes.split(",")]},
                          "fixed.batch_size": None})
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-pareto-") as tmp:
        work = Path(tmp)
        storage = f"sqlite:///{work / 'p.db'}"
        study = hpsearch.run(a.space, overrides=overrides, trials=a.trials, storage=storage, device="cpu")
        front = record.ranked_trials(study)
        report = write_report(study, work / "report.html")
        has_figure = f"Pareto front: accuracy, {a.second}" in report.read_text()
        paths = hpsearch.export("pareto", work / "front.yaml", storage=storage, pareto=True)
        for trial, path in zip(front, paths):
            result = hpsearch.train(path, work / f"model-{trial.number}", device="cpu")
            p, n = trial.values[0], trial.user_attrs[record.VALIDATION_ROWS]
            se = (p * (1 - p) / n) ** 0.5
            again = result["metrics"]["accuracy"]
            rows.append({"trial": trial.number, "accuracy": p, "second": trial.values[1], "params": trial.params,
                         "retrained": again, "se": se, "within": abs(again - p) <= se})
    lines = [f"# A two-objective study: accuracy and {a.second}", "", f"- date: {now()}",
             f"- machine: {machine()}", f"- command: `python -m bench.pareto {' '.join(argv)}`",
             f"- space: `{Path(a.space).name}` with `study.metrics: [accuracy, {a.second}]`"
             f"{', batch size searched over ' + a.batch_sizes if a.batch_sizes else ''}, no pruner, "
             f"{a.trials} trials; the report's front figure: {'yes' if has_figure else 'no'}", "",
             f"| trial | accuracy | {a.second} | params | retrained accuracy | standard error | within one SE |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v:.3g}" for k, v in r["params"].items())
        lines.append(f"| {r['trial']} | {r['accuracy']:.4f} | {r['second']:.2f} | {params} | "
                     f"{r['retrained']:.4f} | {r['se']:.4f} | {'yes' if r['within'] else 'no'} |")
    lines += ["", f"Front members within one standard error when retrained: {sum(r['within'] for r in rows)} of "
                  f"{len(rows)}."]
    write_result(a.out, lines, rows, f"{Path(a.out).stem.lower()}.json")


if __name__ == "__main__":
    main()

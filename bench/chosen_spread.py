"""Where a search's chosen configs win and lose: each retrained with several training seeds, scored on three row sets.

    python -m bench.chosen_spread --json bench/results/raw/search.json --seeds 0,1,2,3 --out bench/results/CHOSEN.md

For every study of an earlier ``search.py`` run (anchor and hpsearch, per sampler seed), the chosen config is
retrained once per training seed (hpsearch's loop, as ``search.py`` retrains) and scored on: the validation rows
the search selected on (``search``), the validation file's other rows (``dev-rest``, same distribution, never
seen), and the held-out train rows ``search.py`` uses (``held-out``). A config that wins on ``search`` with every
training seed and loses elsewhere fits the validation *sample*; one that wins only with the study's own seed was
training-seed luck. The two need different cures (bench/README.md, "What a study's best is").
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench import search  # the same data rows, space and retraining as the benchmark
from bench.common import RAW, RESULTS, now, read_rows, write_tsv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(RAW / "search.json"))
    ap.add_argument("--seeds", default="0,1,2,3", help="training seeds")
    ap.add_argument("--out", default=str(RESULTS / "CHOSEN.md"))
    own = ap.parse_args()
    raw, a = search.earlier_run(own.json)
    work = Path(a.workdir)
    seeds = [int(s) for s in own.seeds.split(",")]
    rows = {"search": (a.validation, 0, a.n_eval, "validation"),
            "dev-rest": (a.validation, a.n_eval, 10**9, "validation"),
            "held-out": (a.train, a.n_train, a.n_train + a.heldout, "train")}
    sets = {}
    for name, (path, start, stop, src) in rows.items():
        header, body = read_rows(path, start, stop)
        if not body:  # e.g. no dev-rest when search.py ran with --validation-from-train
            continue
        sets[name] = (write_tsv(work / f"chosen-{name}.tsv", header, body), src)
    about = {"search": "the validation rows the studies selected on", "dev-rest": "the validation file's other rows",
             "held-out": "search.py's held-out train rows"}
    lines = [f"# Chosen configs retrained with training seeds {own.seeds}", "",
             f"`python -m bench.chosen_spread --json {own.json} --seeds {own.seeds} --out {own.out}` ({now()}); "
             "accuracy mean over seeds (each seed's value in brackets). "
             + "; ".join(f"*{name}*: {about[name]}" for name in sets) + ".", "",
             "| sampler seed | study | value in its study | " + " | ".join(sets) + " |", "|---" * (len(sets) + 3) + "|"]
    for run in raw["runs"]:
        for side in ("anchor", "hpsearch"):
            res = search.retrain_scores(a, run[side]["chosen"], sets, side == "anchor", seeds)
            cells = [f"{statistics.fmean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" for v in res.values()]
            lines.append(f"| {run['seed']} | {side if side == 'anchor' else run['label']} | {run[side]['best']:.3f} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    Path(own.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

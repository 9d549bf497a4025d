"""Search levers, hpsearch side only: whole hpsearch studies per sampler seed with space overrides, no anchor.

    python -m bench.search_levers --label rpe1 --seeds 0,1,2 --set study.reports_per_epoch=1

Runs ``hpsearch run`` exactly as bench/search.py does (same data rows, space, sampler seeds; ``--set`` as there) and
prints one JSON line per seed: the best validation accuracy, when it was found, the study's length, how many
trials were pruned, and when the best-so-far first reached each of ``--thresholds``. Exploration only: lever runs
are compared with each other on one machine in one session; the targets come from bench/search.py
(bench/results/SEARCH.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import search  # the same hpsearch side and its arguments


def main() -> None:
    extra = [a for a in sys.argv[1:] if not a.startswith("--thresholds")]
    thresholds = [0.81, 0.82, 0.83, 0.84]
    for arg in sys.argv[1:]:
        if arg.startswith("--thresholds="):
            thresholds = [float(x) for x in arg.split("=", 1)[1].split(",")]
    sys.argv = [sys.argv[0], *extra]
    a = search.parse_args()
    for key in ("space", "train", "validation", "model", "anchor", "out", "workdir"):
        setattr(a, key, str(Path(getattr(a, key)).resolve()))
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in a.seeds.split(",")):
        hp = search.run_hpsearch(a, seed, work)
        reach = {str(th): search.time_to_reach(hp["curve"], th) for th in thresholds}
        print(json.dumps({"label": a.label, "seed": seed, "best": round(hp["best"], 3),
                          "t_best": round(hp["time_to_best_s"]), "study_s": round(hp["search_s"]),
                          "pruned": hp["pruned"], "trials": len(hp["states"]),
                          "reach": {k: None if v is None else round(v) for k, v in reach.items()},
                          "chosen": hp["chosen"]}), flush=True)


if __name__ == "__main__":
    main()

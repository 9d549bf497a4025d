"""Held-out accuracy of the configs an earlier ``search.py`` run chose, on held-out rows from another source.

    python -m bench.heldout --json bench/results/raw/search.json --source validation \
        --append bench/results/SEARCH.md

``search.py`` holds out rows of the *train* file (after the training rows). On SST-2 those are short phrases while
the validation file holds whole sentences, so a config can win on one and lose on the other. ``--source
validation`` retrains each study's chosen config the same way (hpsearch's loop, ``--retrain-seeds`` training seeds)
and scores it on the validation file's rows after the ``--n-eval`` used for validation: the distribution the search
optimized, on rows it never saw. Writes a markdown table (appended to ``--append`` if given).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import search  # the same retraining and statistics as the benchmark
from bench.common import RAW, read_rows, write_tsv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(RAW / "search.json"))
    ap.add_argument("--source", choices=["validation", "train"], default="validation")
    ap.add_argument("--append", default=None, help="markdown file to append the table to")
    own = ap.parse_args()
    raw, a = search.earlier_run(own.json)
    work = Path(a.workdir)
    path, start = (a.validation, a.n_eval) if own.source == "validation" else (a.train, a.n_train)
    header, rows = read_rows(path, start, 10**9)
    if own.source == "train":
        rows = rows[: a.heldout]
    if not rows:
        sys.exit(f"{path}: no rows after the first {start}")
    heldout = write_tsv(work / f"heldout-{own.source}.tsv", header, rows)
    lines = [f"### Held-out rows from the {own.source} file: {path} rows {start + 1}-{start + len(rows)} "
             f"({len(rows)} rows)", "",
             f"`python -m bench.heldout --json {own.json} --source {own.source}`: each study's chosen config "
             f"retrained {a.retrain_seeds} times, mean ± standard error.", "",
             "| seed | held-out anchor | held-out hpsearch | diff (pts) | within 1 SE |", "|---|---|---|---|---|"]
    ok = 0
    for run in raw["runs"]:
        held_a = search.heldout_accuracy(a, run["anchor"]["chosen"], heldout, as_anchor=True, columns_from=own.source)
        held_h = search.heldout_accuracy(a, run["hpsearch"]["chosen"], heldout, as_anchor=False,
                                         columns_from=own.source)
        (ma, sa), (mh, sh) = search.mean_se(held_a, len(rows)), search.mean_se(held_h, len(rows))
        within = mh >= ma - (sa**2 + sh**2) ** 0.5
        ok += within
        lines.append(f"| {run['seed']} | {ma:.3f} ± {sa:.3f} | {mh:.3f} ± {sh:.3f} | {100 * (mh - ma):+.1f} | "
                     f"{'yes' if within else 'no'} |")
        print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", f"**{ok} of {len(raw['runs'])} seeds** within one standard error (or better).", ""]
    text = "\n".join(lines)
    print(text)
    if own.append:
        with open(own.append, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()

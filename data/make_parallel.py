"""Write data/parallel-demo/: a tiny parallel corpus, English SST-2 dev sentences and their Pig Latin, for the
translation space and tests (nothing downloaded: the sentences ship in data/sst2/).

    python data/make_parallel.py

Pig Latin is a real, deterministic mapping a small model can learn in minutes: a word starting with a vowel gets
"way" appended; otherwise its leading consonants move to the end, followed by "ay" ("movie" -> "oviemay").
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOWELS = "aeiou"


def pig_latin(word: str) -> str:
    if not word.isalpha():
        return word
    if word[0] in VOWELS:
        return word + "way"
    m = re.match(r"([^aeiou]+)(.*)", word)
    head, rest = m.group(1), m.group(2)
    return (rest + head + "ay") if rest else word + "ay"


def main() -> None:
    with open(HERE / "sst2" / "dev.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [" ".join(r["content"].lower().split()[:12]) for r in rows]
    pairs = [{"english": s, "pig_latin": " ".join(pig_latin(w) for w in s.split())} for s in sentences if s]
    out = HERE / "parallel-demo"
    out.mkdir(exist_ok=True)
    for name, part in (("train", pairs[:700]), ("dev", pairs[700:800])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in part), encoding="utf-8")
    print(f"wrote {out}: {min(700, len(pairs))} train and {len(pairs[700:800])} dev pairs")


if __name__ == "__main__":
    main()

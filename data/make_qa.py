"""Write data/qa-demo/: small SQuAD-style question answering data for the question_answering space and tests
(nothing downloaded: the review sentences ship in data/sst2/).

    python data/make_qa.py

Each context is a few SST-2 review sentences with two or three facts about the film put among them (who directed
it, where it was shot, when it came out, who plays the lead, how long it runs), most with the same fact about its
sequel; each question asks for one of those facts, and its answer is that fact's span with its character offset
(SQuAD's ``answers`` column: ``{"text": [...], "answer_start": [...]}``). Contexts run 40 to 250 words, so that
with ``model.max_length`` 128 the longer ones are cut into overlapping windows. Seeded: the same files every time.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = "Maria Jonas Aiko Pedro Lena Omar Ingrid Tomas Chloe Rafael Nadia Viktor Elena Samuel Greta Hugo".split()
LAST = "Moreau Okafor Lindqvist Tanaka Alvarez Novak Brennan Costa Haddad Fischer Ramos Petrov Quinn Sato".split()
CITIES = ["Lisbon", "Montreal", "Kyoto", "Cape Town", "Reykjavik", "Buenos Aires", "Prague", "Marseille",
          "Oaxaca", "Tallinn", "Glasgow", "Hanoi"]
FACTS = (  # the film's fact, the question about it; the sequel's, its question; the kind of answer
    ("It was directed by {}.", "Who directed the film?",
     "Its sequel was directed by {}.", "Who directed the sequel?", "person"),
    ("Filming took place in {}.", "Where was the film shot?",
     "The sequel was shot in {}.", "Where was the sequel shot?", "city"),
    ("The film was released in {}.", "When was the film released?",
     "The sequel came out in {}.", "When did the sequel come out?", "year"),
    ("The lead role went to {}.", "Who plays the lead role?",
     "In the sequel the lead went to {}.", "Who plays the lead in the sequel?", "person"),
    ("The final cut runs {}.", "How long is the film?",
     "The sequel runs {}.", "How long is the sequel?", "minutes"),
)


def value(kind: str, rng: random.Random) -> str:
    if kind == "person":
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    if kind == "city":
        return rng.choice(CITIES)
    if kind == "year":
        return str(rng.randint(1950, 2024))
    return f"{rng.randint(80, 190)} minutes"


def example(sentences: list[str], rng: random.Random, number: int) -> dict:
    """A context of review sentences with facts among them, and a question about one fact. Most facts come with
    the same fact about the sequel (another value of the same kind), so that the question, not the kind of answer,
    decides which span is right."""
    parts = [s[0].upper() + s[1:] + ("" if s.endswith((".", "!", "?")) else ".")
             for s in rng.sample(sentences, rng.randint(2, 7))]
    facts = []  # (sentence, question, answer)
    for film, film_q, sequel, sequel_q, kind in rng.sample(FACTS, rng.randint(2, 3)):
        facts.append((film, film_q, value(kind, rng)))
        if rng.random() < 0.7:
            other = value(kind, rng)
            while other == facts[-1][2]:
                other = value(kind, rng)
            facts.append((sequel, sequel_q, other))
    for template, _, answer in facts:
        parts.insert(rng.randint(0, len(parts)), template.format(answer))
    context = " ".join(parts)
    template, question, answer = rng.choice(facts)
    start = context.index(template.format(answer)) + template.index("{}")
    assert context[start:start + len(answer)] == answer
    return {"id": f"qa-{number}", "question": question, "context": context,
            "answers": {"text": [answer], "answer_start": [start]}}


def main() -> None:
    with open(HERE / "sst2" / "dev.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [" ".join(r["content"].split()) for r in rows if 4 <= len(r["content"].split()) <= 30]
    rng = random.Random(7)
    out = HERE / "qa-demo"
    out.mkdir(exist_ok=True)
    split = len(sentences) * 4 // 5  # dev contexts use sentences train contexts never saw
    for name, pool, n, first in (("train", sentences[:split], 600, 0), ("dev", sentences[split:], 150, 600)):
        lines = [json.dumps(example(pool, rng, first + i)) + "\n" for i in range(n)]
        (out / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    print(f"wrote {out}: 600 train and 150 dev questions")


if __name__ == "__main__":
    main()

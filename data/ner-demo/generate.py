"""Writes train.conll and dev.conll: a small synthetic English NER set (PER, ORG, LOC, MISC; IOB2) for the demo.

No real NER corpus could be had from the package registries, so this one is generated from templates, seeded,
by this script (`python data/ner-demo/generate.py`). It exercises the whole token-classification path
(multi-word entities, sub-word tokens, four entity types); its scores say nothing about real-world NER.
Licence: the project's (Apache-2.0); the names are common first/last names and places.
"""
from __future__ import annotations

import random
from pathlib import Path

PEOPLE = ["Maria Garcia", "John Smith", "Wei Zhang", "Aisha Khan", "Lars Nilsson", "Sofia Rossi", "Kenji Sato",
          "Olga Petrova", "David Cohen", "Fatima Ali", "Pierre Dubois", "Anna Kowalska", "Carlos Mendez", "Emma",
          "Hans Müller", "Priya Sharma", "Tom", "Yusuf Demir", "Grace Okafor", "Liam O'Brien"]
ORGS = ["Acme Corp", "the United Nations", "Siemens", "Deutsche Bank", "the World Health Organization", "Toyota",
        "Reuters", "Oxford University", "the European Commission", "Nokia", "Red Cross", "Barclays", "FIFA",
        "Samsung Electronics", "the Bank of England", "NASA"]
PLACES = ["Paris", "New York", "Tokyo", "Berlin", "Nairobi", "São Paulo", "Oslo", "Cairo", "Mumbai", "Sydney",
          "Buenos Aires", "Warsaw", "Istanbul", "Lagos", "Rome", "Seoul", "Lake Geneva", "the Alps"]
MISC = ["Olympic Games", "World Cup", "Nobel Prize", "Brexit", "English", "French", "Christmas", "Ramadan",
        "Grand Prix", "Euro"]
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{ORG} said on Monday that {PER} would visit {LOC} .",
    "{PER} won the {MISC} in {LOC} last year .",
    "Shares of {ORG} rose 3 percent after {PER} spoke in {LOC} .",
    "{LOC} will host the {MISC} , officials from {ORG} confirmed .",
    "In {LOC} , {PER} met {PER2} to discuss the {MISC} .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "The {MISC} drew large crowds in {LOC} and {LOC2} .",
    "{ORG} opened a new office in {LOC} .",
    "{PER} moved from {LOC} to {LOC2} in 2019 .",
    "Analysts at {ORG} expect growth to slow .",
    "{PER} speaks {MISC} fluently .",
    "Talks between {ORG} and {ORG2} ended without agreement .",
    "Heavy rain hit {LOC} on Tuesday .",
]
KINDS = {"PER": PEOPLE, "ORG": ORGS, "LOC": PLACES, "MISC": MISC}


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """One templated sentence as (word, IOB2 tag) pairs."""
    out: list[tuple[str, str]] = []
    for slot in rng.choice(TEMPLATES).split():
        key = slot.strip("{}").rstrip("2")
        if slot.startswith("{") and key in KINDS:
            words = rng.choice(KINDS[key]).split()
            out += [(w, ("B-" if i == 0 else "I-") + key) for i, w in enumerate(words)]
        else:
            out.append((slot, "O"))
    return out


def write(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["-DOCSTART- O", ""]
    for _ in range(n):
        lines += [f"{w} {t}" for w, t in sentence(rng)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    here = Path(__file__).parent
    write(here / "train.conll", 800, 1)
    write(here / "dev.conll", 200, 2)

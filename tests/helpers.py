"""Plain helpers the tests share (fixtures live in conftest.py): the synthetic data, a small valid space, one
trial's hyperparameters."""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
POSITIVE = "good great fine lovely superb brilliant charming wonderful".split()
NEGATIVE = "bad awful poor dull boring terrible weak clumsy".split()
FILLER = "the movie film plot was is a an and very quite really acting story".split()

def sentences(n: int, seed: int) -> list[tuple[int, str]]:
    """Labelled sentences whose sentiment words decide the label: learnable in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(2, 8)) + rng.sample(POSITIVE if label else NEGATIVE, rng.randint(1, 3))
        rng.shuffle(words)
        rows.append((label, " ".join(words)))
    return rows


def space_dict(model: Path, data: dict[str, Path], **overrides: object) -> dict:
    """A small valid space over the tiny model and data (fast trials: 192 examples, batch 16, 2 reports)."""
    cfg = {
        "study": {"name": "tiny", "metric": "accuracy", "sampler": {"name": "tpe", "seed": 0},
                  "pruner": {"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}},
                  "reports_per_epoch": 2},
        "model": {"name_or_path": str(model), "max_length": 32},
        "data": {"task": "classification", "train": {"path": str(data["train"]), "text_column": "sentence"},
                 "validation": {"path": str(data["dev"]), "text_column": "content"}, "label_column": "label"},
        "params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                   "dropout": {"type": "float", "low": 0.0, "high": 0.2}},
        "fixed": {"batch_size": 16, "epochs": 2, "seed": 0, "warmup_ratio": 0.0},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def sampler_overrides(name: str, seed: int) -> dict:
    """``space_dict`` overrides for sampler ``name`` seeded with ``seed``; gp runs without a pruner (validation
    refuses the pair: it learns nothing from pruned trials)."""
    no_pruner = {"study__pruner": {"name": "none"}} if name == "gp" else {}
    return {"study__sampler": {"name": name, "seed": seed}, **no_pruner}


def trial_hp(space, **kw: object) -> dict:
    """Every hyperparameter for one trial: defaults, the space's fixed values, a quick-learning lr, then ``kw``."""
    from hpsearch.config.vocabulary import HYPERPARAMETERS

    hp = {name: spec.default for name, spec in HYPERPARAMETERS.items()}
    hp.update(space.fixed)
    hp.update(learning_rate=2e-3, dropout=0.0)
    hp.update(kw)
    return hp


PEOPLE = "alice bob carol dave".split()
PLACES = "paris rome oslo".split()
TAG_FILLER = "met in visited from saw the and went to".split()
TAG_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(PEOPLE + TAG_FILLER))
             + ["paris", "rome", "os", "##lo", "van", "##der", "##berg"])
"""WordPiece pieces: 'oslo' is two tokens (os ##lo) and 'vanderberg' three, so sub-word alignment is exercised."""


def tagged_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences with IOB2 tags: people (one or two words, 'alice vanderberg') and places; learnable quickly."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(2, 4)):
            kind = rng.random()
            if kind < 0.35:
                words.append(rng.choice(PEOPLE))
                tags.append("B-PER")
                if rng.random() < 0.3:
                    words.append("vanderberg")
                    tags.append("I-PER")
            elif kind < 0.6:
                words.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                words.append(rng.choice(TAG_FILLER))
                tags.append("O")
        rows.append((words, tags))
    return rows


def write_jsonl_splits(folder: Path, prefix: str, rows: Callable[[int, int], list[dict]],
                       sizes: dict[str, int]) -> dict[str, Path]:
    """One JSONL file per split (``{split: rows}``), ``rows(n, seed)`` making each split's rows with its own seed."""
    out = {}
    for seed, (name, n) in enumerate(sizes.items(), 1):
        path = folder / f"{prefix}_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)), encoding="utf-8")
        out[name] = path
    return out


def write_conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    """A CoNLL-2003-style file: a -DOCSTART- line, then word, POS, chunk and NER tag per line, blank between."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in rows:
        lines += [f"{w} NN I-NP {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def wordpiece(vocab: list[str], **special: str):
    """A fast WordPiece tokenizer over ``vocab`` with the given special tokens (no pad token unless named)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **special)

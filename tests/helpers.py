"""Plain helpers the tests share (fixtures live in conftest.py): the synthetic data, a small valid space, one
trial's hyperparameters."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
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


def fake_accuracy(hp) -> float:
    """A stand-in trial value for sampler tests: best near learning rate 10^-3.5, higher with bigger batches."""
    import math

    return 0.9 - 0.05 * abs(math.log10(hp.learning_rate) + 3.5) + hp.batch_size / 1000


def batch_size_search(space) -> dict:
    """``space`` (validated) as a raw dict searching batch size (8-128: the large ones the memory-bound tests fail)
    and learning rate with a seeded TPE: what the sampler-learning tests search."""
    raw = space.to_dict()
    raw["params"] = {"batch_size": {"type": "categorical", "choices": [8, 16, 32, 64, 128]},
                     "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}
    raw["fixed"].pop("batch_size")
    raw["study"]["sampler"] = {"name": "tpe", "seed": 3}
    return raw


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


def trial_hp(space, **kw: object):
    """Every hyperparameter for one trial: defaults, the space's fixed values, a quick-learning lr, then ``kw``."""
    from hpsearch.config.vocabulary import Hyperparameters

    return Hyperparameters.of({**space.fixed, "learning_rate": 2e-3, "dropout": 0.0, **kw})


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


def default_signals() -> None:
    """In a child about to start: SIGINT and SIGTERM at their defaults, whatever the suite was started with (a
    suite started in the background, ``cmd &`` or nohup, runs with SIGINT ignored, which children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """``hpsearch ARGS`` as a process of its own (one thread), for tests where processes are the point; it takes
    signals as a process started from a terminal does."""
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=default_signals)


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    """Wait for each process; each must exit 0."""
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err


def saved(storage: object, study_name: str, trials: int = 1) -> bool:
    """Whether ``trials`` trials of the study have saved a checkpoint (False while the study does not exist)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return False
    return sum("hpsearch:checkpoint" in t.system_attrs for t in study.get_trials(deepcopy=False)) >= trials


def kill_a_worker_mid_trial(url: str, make_space: Callable, tmp_path: Path, study_name: str,
                            hpsearch: Callable) -> object:
    """A worker process killed (SIGKILL) while its trial 0 trains, after its first checkpoint, then a second worker
    with ``--total 2`` on the same study (``hpsearch``: the CLI in the test's process, which never ran the trial),
    both with a 1 s heartbeat and a 3 s grace period, as every storage must survive it: trial 0 ends FAIL, nothing
    stays RUNNING, the total is reached, and trial 0 is retried once, continuing from its checkpoint to the end; no
    checkpoint is left. Returns the retry."""
    import optuna

    from hpsearch.study.storage import default_location, open_storage

    beat = ["--heartbeat-interval", "1", "--grace-period", "3", "--storage", url, "--study-name", study_name]
    space = str(make_space("slow.yaml", fixed__epochs=6))  # 12 reports: killed after the first
    victim = start_cli(["run", "--space", space, "--trials", "1", "--quiet", *beat], tmp_path)
    storage = open_storage(url, read_only=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not saved(storage, study_name):
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["RUNNING"]  # nobody has noticed yet
    hpsearch("run", "--space", space, "--total", "2", "--quiet", *beat, check=True)
    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and "RUNNING" not in states
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 2
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params
    assert retried[0].user_attrs["retry_of"] == 0
    resumed = retried[0].user_attrs["resumed_from"]
    assert resumed["trial"] == 0 and resumed["step"] >= 1
    if retried[0].state.name == "COMPLETE":
        assert retried[0].user_attrs["steps"] == resumed["of_steps"]
    store = Path(default_location(url)) if not url.startswith(("postgresql", "mysql")) else tmp_path / \
        "hpsearch-artifacts"
    assert not [p for p in store.rglob("*") if p.is_file()], "a checkpoint outlived its trial"
    return retried[0]

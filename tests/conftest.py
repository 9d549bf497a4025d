"""Shared fixtures: a tiny random BERT saved to disk, a small learnable sentiment dataset, space files."""
from __future__ import annotations

import csv
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import FILLER, NEGATIVE, POSITIVE, TAG_VOCAB, sentences, space_dict, wordpiece

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes on the machine's cores: a thread each, so
    torch.set_num_threads(1)               # that no process's idle OpenMP threads spin on a core another needs
    os.environ["OMP_NUM_THREADS"] = "1"

LONGEST_FIRST = ("tests/test_bench.py", "tests/study/test_ray.py", "tests/study/test_outage.py",
                 "tests/tasks/test_causal_memory.py", "tests/faces/test_api.py", "tests/study/test_distributed.py",
                 "tests/study/test_fused_study.py", "tests/study/test_faults.py")
"""Files of the suite's longest tests (`pytest --durations`: 20-95 s each), handed out first: xdist's processes
then end together instead of one running a long test alone at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and for every other file, the order as collected


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a WordPiece vocab of the test words, as safetensors."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    # As in BERT, some rows no text of the data ever uses ([UNK], [MASK], [unused*]).
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(8)]
             + sorted(set(POSITIVE + NEGATIVE + FILLER)))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary itself (a dict); 4.x took vocab_file. Support both.
    try:
        tokenizer = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)})
    except TypeError:
        tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    assert tokenizer.convert_tokens_to_ids("good") == vocab.index("good")
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train.tsv (header: label, sentence) and dev.tsv (header: label, content), as in SST-2."""
    path = tmp_path_factory.mktemp("tiny-data")
    for name, text_col, n, seed in (("train.tsv", "sentence", 192, 1), ("dev.tsv", "content", 64, 2)):
        with open(path / name, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None)
            w.writerow(["label", text_col])
            w.writerows(sentences(n, seed))
    return {"train": path / "train.tsv", "dev": path / "dev.tsv"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own tokenized-data cache and working directory, and no ambient storage URL."""
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)


@pytest.fixture
def settled():
    """The collector as a study runs it (:func:`hpsearch.study.runner.settle_memory`), for tests that drive an
    Objective themselves: each trial's collection then walks only what the trial made (~0.27 s a trial otherwise)."""
    from hpsearch.study.runner import settle_memory, unsettle_memory

    settle_memory()
    yield
    unsettle_memory()


@pytest.fixture
def sft(tmp_path: Path, tiny_decoders):
    """A causal-LM space on the tiny Llama (prompts masked out of the loss) and its prepared data (48 rows, 16)."""
    from hpsearch.config.validation import validate
    from hpsearch.finetune.data import prepare
    from hpsearch.finetune.model import load_tokenizer
    from tests.helpers import write_jsonl_splits
    from tests.tasks.test_tasks import sft_rows, sft_space

    files = write_jsonl_splits(tmp_path, "sft", sft_rows, {"train": 48, "dev": 16})
    space = validate(sft_space(tiny_decoders["llama"], files["train"], files["dev"], prompt_column="instruction",
                               response_column="answer"))
    return space, prepare(space.data, load_tokenizer(space.model), 32)


@pytest.fixture
def make_space(tiny_model: Path, tiny_data: dict[str, Path], tmp_path: Path):
    """Write a space file (keyword overrides use __ for nesting: study__name='x') and return its path."""

    def _make(name: str = "space.yaml", **overrides: object) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(space_dict(tiny_model, tiny_data, **overrides), sort_keys=False))
        return path

    return _make


@dataclass
class Ran:
    """What a command gave back: its exit status and its two streams (as subprocess.CompletedProcess names them)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def hpsearch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run a CLI command in this process, as click runs it, with tmp_path as the working directory.

    No process boundary: what a command prints and its exit code are the same as the console script's (an
    unexpected exception fails the test instead of becoming exit 1). Tests where the process is the point
    (signals, workers, servers, the console script) start their own."""
    from click.testing import CliRunner

    from hpsearch.cli import cli

    monkeypatch.chdir(tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def _run(*args: str, check: bool = False, env: dict | None = None, timeout: float | None = None) -> Ran:
        try:
            result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False, prog_name="hpsearch")
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        ran = Ran(result.exit_code, result.stdout, result.stderr)
        if check and ran.returncode != 0:
            raise AssertionError(f"hpsearch {' '.join(args)} exited {ran.returncode}\n{ran.stdout}\n{ran.stderr}")
        return ran

    return _run


def _server_url(env: str, default: str) -> str:
    """A database URL from the environment, if its server answers; skip otherwise (fail when CI requires it)."""
    import sqlalchemy

    url = os.environ.get(env, default)
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:  # driver missing or server down
        message = f"{env}: no server at {url} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        if os.environ.get("HPSEARCH_TEST_REQUIRE_SERVICES"):
            pytest.fail(message + "; CI requires it (HPSEARCH_TEST_REQUIRE_SERVICES)")
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_url() -> str:
    return _server_url("HPSEARCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def mysql_url() -> str:
    return _server_url("HPSEARCH_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _redis_db() -> int:
    """A Redis database of this test process's own (15, 14, ... for xdist's workers gw0, gw1, ...): the fixture
    clears the journal's keys there before and after each test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return 15 - min(7, int(worker[2:] or 0))


@pytest.fixture
def redis_url() -> str:
    """The journal on this machine's Redis, in a database of this test process's own."""
    url = os.environ.get("HPSEARCH_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{_redis_db()}")
    try:
        import redis

        client = redis.Redis.from_url(url)
        client.ping()
    except Exception as exc:
        message = f"no Redis at {url} ({type(exc).__name__})"
        if os.environ.get("HPSEARCH_TEST_REQUIRE_SERVICES"):
            pytest.fail(message + "; CI requires it (HPSEARCH_TEST_REQUIRE_SERVICES)")
        pytest.skip(message)
    keys = lambda: client.keys(":log*")  # noqa: E731  the journal backend's keys (empty prefix)
    if keys():
        client.delete(*keys())
    yield url
    if keys():
        client.delete(*keys())


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Real storage for fault tests: a fresh SQLite file, and the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/faults.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study_name(request: pytest.FixtureRequest) -> str:
    """A study name no other test (or earlier run against the same server) uses."""
    import uuid

    return f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def setup(make_space):
    """A space over the tiny model and data, and that data tokenized (max_length 32): what a trial gets."""
    from hpsearch.config.load import load_space
    from hpsearch.finetune.data import prepare
    from hpsearch.finetune.model import load_tokenizer

    space = load_space(make_space())
    data = prepare(space.data, load_tokenizer(space.model), 32)
    return space, data


@pytest.fixture(params=["postgres_url", "mysql_url"])
def empty_database(request: pytest.FixtureRequest):
    """A new, empty database on the PostgreSQL or MariaDB server (as on a new CI machine), dropped afterwards."""
    import uuid

    import sqlalchemy

    server = sqlalchemy.engine.make_url(request.getfixturevalue(request.param))
    name = f"hpsearch_fresh_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if server.get_backend_name() == "postgresql" else ""
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name}{force}"))
        admin.dispose()


# ---------------------------------------------------------------------------------------------------------------
# Token classification and decoder models.

@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) whose WordPiece vocab covers the tagged sentences."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-tagger")
    BertTokenizerFast(vocab={tok: i for i, tok in enumerate(TAG_VOCAB)}).save_pretrained(path)
    config = BertConfig(vocab_size=len(TAG_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama (grouped-query attention) and a tiny GPT-2, sharing a WordPiece tokenizer that has an EOS
    token and no pad token, as most decoder tokenizers."""
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    vocab = sorted(set(TAG_VOCAB + POSITIVE + NEGATIVE + FILLER), key=lambda w: (not w.startswith("["), w))
    out = {}
    for name, config, cls in (
        ("llama", LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              bos_token_id=2, eos_token_id=3, pad_token_id=None), LlamaModel),
        ("gpt2", GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                            bos_token_id=3, eos_token_id=3), GPT2Model),
    ):
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        wordpiece(vocab, eos_token="[SEP]").save_pretrained(path)
        torch.manual_seed(0)
        cls(config).save_pretrained(path, safe_serialization=True)
        out[name] = path
    return out


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny T5 and a tiny BART (2 + 2 layers, hidden 32) sharing a WordPiece tokenizer with pad and EOS tokens
    that adds no special tokens itself (the seq2seq task then ends each target with EOS)."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    vocab = sorted(set(TAG_VOCAB + POSITIVE + NEGATIVE + FILLER), key=lambda w: (not w.startswith("["), w))
    pad, bos, eos = vocab.index("[PAD]"), vocab.index("[CLS]"), vocab.index("[SEP]")
    out = {}
    for name, config, cls in (
        ("t5", T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                        num_heads=4, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad),
         T5ForConditionalGeneration),
        ("bart", BartConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=pad, bos_token_id=bos,
                            eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=None),
         BartForConditionalGeneration),
    ):
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        wordpiece(vocab, eos_token="[SEP]", pad_token="[PAD]").save_pretrained(path)
        torch.manual_seed(0)
        cls(config).save_pretrained(path, safe_serialization=True)
        out[name] = path
    return out

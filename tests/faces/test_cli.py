"""The CLI end to end, as click runs it in this process: run, resume, refuse, list, export, train; and the console
script itself in a process of its own (what it imports, its exit codes)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.config.load import load_space
from hpsearch.version import __version__ as hpsearch_version
from tests.helpers import REPO


def _digest(path: Path) -> str:
    """The database's content (an SQL dump), not its bytes: WAL checkpoints rewrite pages without changes."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys, runpy; sys.argv = ['hpsearch', 'run', '--help']\n"
            "try:\n    runpy.run_module('hpsearch', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "adds N more" in out.stdout.replace("\n", " ").replace("  ", " ") or "resumes" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_console_script_exits_2_on_a_bad_space_without_a_traceback(make_space) -> None:
    script = Path(sys.executable).with_name("hpsearch")
    bad = make_space("bad.yaml", study__metric="auc")
    res = subprocess.run([str(script), "validate", "--space", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and "study.metric" in res.stderr and "Traceback" not in res.stderr
    assert subprocess.run([str(script), "--version"], capture_output=True, text=True).stdout.strip().endswith(
        hpsearch_version)


def test_validate_ok_and_bad(make_space, hpsearch) -> None:
    ok = hpsearch("validate", "--space", str(make_space()))
    assert ok.returncode == 0 and "OK" in ok.stdout and "maximize accuracy" in ok.stdout
    two = make_space("two.yaml", study__metrics=["accuracy", "latency_ms"], study__metric=None, study__pruner=None,
                     params__dropout={"type": "float", "low": 0.0, "high": 0.2, "when": "learning_rate > 2e-4"})
    summary = hpsearch("validate", "--space", str(two), check=True).stdout
    assert "maximize accuracy, minimize latency_ms" in summary and "(1 conditional: dropout)" in summary
    assert "pruner none" in summary
    bad = make_space("bad.yaml", study__metric="auc", fixed__epochs=0)
    res = hpsearch("validate", "--space", str(bad))
    assert res.returncode == 2
    assert str(bad) in res.stderr and "study.metric" in res.stderr and "fixed.epochs" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) < 20


def test_bad_space_writes_nothing(make_space, hpsearch, tmp_path: Path) -> None:
    bad = make_space("bad.yaml", params__dropout={"type": "float", "low": 0.5, "high": 0.1})
    res = hpsearch("run", "--space", str(bad), "--trials", "2", "--storage", f"sqlite:///{tmp_path}/s.db")
    assert res.returncode == 2 and "params.dropout.low" in res.stderr
    assert not (tmp_path / "s.db").exists()
    res = hpsearch("run", "--space", str(make_space()), "--trials", "2", "--set", "fixed.batch_size=0")
    assert res.returncode == 2 and "fixed.batch_size" in res.stderr
    assert not (tmp_path / "studies.db").exists()


@pytest.mark.parametrize("flag, value", [("--storage-retry-s", "nan"), ("--timeout", "inf"),
                                         ("--cpus-per-worker", "-inf")])
def test_a_number_flag_takes_finite_numbers_only(make_space, hpsearch, flag: str, value: str) -> None:
    """A NaN retry window would wait for a storage for ever; no float option takes NaN or an infinity."""
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", flag, value)
    assert res.returncode == 2 and f"{flag}: must be a finite number" in res.stderr and value in res.stderr
    assert "Traceback" not in res.stderr


def test_every_bad_flag_and_every_space_problem_at_once(make_space, hpsearch, tmp_path: Path) -> None:
    """The command line names every bad flag at once, as the Python API does; with a bad space too, its problems
    and the rules of the flags together, in one refusal."""
    res = hpsearch("run", "--space", str(make_space()), "--trials", "0", "--storage-retry-s", "nan", "--keep-best",
                   "many", "--device", "tpu")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    for said in ("--trials: must be an integer >= 1, got 0", "--storage-retry-s: must be a finite number",
                 "--keep-best: must be an integer >= 1, got 'many'", "--device: must be auto, cpu, cuda or cuda:N"):
        assert said in res.stderr, res.stderr
    bad = make_space("bad.yaml", study__metric="auc")
    res = hpsearch("run", "--space", str(bad), "--trials", "1", "--workers", "4", "--trials-per-gpu", "2")
    assert res.returncode == 2 and "the run cannot start (2 problems)" in res.stderr, res.stderr
    assert "study.metric" in res.stderr and "--workers 4 and --trials-per-gpu 2: give one" in res.stderr
    res = hpsearch("run", "--space", str(bad), "--trials", "0")
    assert res.returncode == 2 and "study.metric" in res.stderr and "--trials: must be an integer" in res.stderr
    assert not (tmp_path / "studies.db").exists()


def test_unreachable_storage_is_one_clear_line_without_password(make_space, hpsearch) -> None:
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--quiet", "--storage-retry-s", "1",
                   "--storage", "postgresql://bob:s3cret@127.0.0.1:9/nowhere")
    assert res.returncode == 1
    assert "cannot open storage postgresql://bob:***@127.0.0.1:9/nowhere" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout and "Traceback" not in res.stderr


def test_run_resume_refuse_list_export_train(make_space, hpsearch, tmp_path: Path) -> None:
    space = make_space(study__enqueue=[{"learning_rate": 3e-3, "dropout": 0.0}])
    db = tmp_path / "studies.db"

    first = hpsearch("run", "--space", str(space), "--trials", "3", "--quiet", check=True)
    assert "best trial" in first.stdout and "trial 0 started" in first.stderr  # results to stdout, logs to stderr
    storage = f"sqlite:///{db}"  # the default: ./studies.db in the working directory
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 3 and study.trials[0].params == {"learning_rate": 3e-3, "dropout": 0.0}
    attrs = study.trials[0].user_attrs
    for key in ("val_accuracy", "val_f1", "val_eval_loss", "train_time_s", "eval_time_s", "examples_per_s",
                "tokens_per_s", "device", "steps", "epochs_completed", "peak_memory_mb", "status", "hyperparameters"):
        assert key in attrs, key
    assert attrs["device"] == "cpu" and attrs["epochs_completed"] == 2.0 and attrs["status"] == "completed"
    config = study.user_attrs["config:" + attrs["config_id"]]
    assert config["study"]["metric"] == "accuracy" and config["fixed"]["batch_size"] == 16

    hpsearch("run", "--space", str(space), "--trials", "2", "--quiet", check=True)  # resumes: adds 2
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 5

    before = _digest(db)
    refused = hpsearch("run", "--space", str(space), "--trials", "1", "--set", "study.metric=eval_loss")
    assert refused.returncode == 2 and "direction" in refused.stderr and "--study-name" in refused.stderr
    assert _digest(db) == before

    listing = hpsearch("trials", "--study", "tiny", check=True).stdout
    assert listing.count("COMPLETE") + listing.count("PRUNED") == 5
    assert "tiny" in hpsearch("studies", check=True).stdout

    out = hpsearch("export", "--study", "tiny", "--output", "best.yaml", check=True)
    assert out.stdout.strip() == "best.yaml"
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith("# hpsearch train --config best.yaml")
    best = optuna.load_study(study_name="tiny", storage=storage).best_trial
    exported = load_space(tmp_path / "best.yaml")
    assert exported.params == {} and exported.config["origin"]["trial"] == best.number
    assert exported.fixed["learning_rate"] == best.params["learning_rate"]
    assert exported.fixed["batch_size"] == 16 and exported.fixed["epochs"] == 2
    hpsearch("export", "--study", "tiny", "--output", "best.json", check=True)
    assert json.loads((tmp_path / "best.json").read_text())["fixed"] == exported.fixed
    complete = [t for t in optuna.load_study(study_name="tiny", storage=storage).trials if t.state.name == "COMPLETE"]
    top = hpsearch("export", "--study", "tiny", "--output", "top.yaml", "--top", "5", check=True).stdout.split()
    assert top == [f"top-{i}.yaml" for i in range(1, min(5, len(complete)) + 1)]  # only completed trials count
    values = [load_space(tmp_path / name).config["origin"]["value"] for name in top]
    assert values[0] == best.value and values == sorted(values, reverse=True)

    trained = hpsearch("train", "--config", "best.yaml", "--output-dir", "best-model", check=True)
    metrics = json.loads((tmp_path / "best-model" / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] == pytest.approx(best.value, abs=1e-6)  # same seed, same CPU
    assert json.loads(trained.stdout)["accuracy"] == metrics["metrics"]["accuracy"]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "best-model")
    assert model.config.id2label == {0: "0", 1: "1"}
    assert (tmp_path / "best-model" / "model.safetensors").is_file()
    again = hpsearch("train", "--config", "best.yaml", "--output-dir", "best-model")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_export_errors(make_space, hpsearch, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/studies.db"
    optuna.create_study(study_name="empty", storage=storage)
    res = hpsearch("export", "--study", "empty", "--output", "best.yaml")
    assert res.returncode == 2 and "no completed trial" in res.stderr
    res = hpsearch("export", "--study", "nope", "--output", "best.yaml")
    assert res.returncode == 2 and "empty" in res.stderr  # names the studies that do exist
    assert not (tmp_path / "best.yaml").exists()


def test_train_refuses_a_space_with_searched_params(make_space, hpsearch) -> None:
    res = hpsearch("train", "--config", str(make_space()), "--output-dir", "out")
    assert res.returncode == 2 and "still searched" in res.stderr


def test_a_study_written_by_an_earlier_version_exports_and_reports(hpsearch, tmp_path: Path) -> None:
    """studies.db.example was written before micro_batch_size, lora_* and model.distributed existed: its configs
    export with those at their defaults, and the report reads it."""
    import shutil

    from hpsearch.config.vocabulary import HYPERPARAMETERS

    shutil.copy(REPO / "studies.db.example", tmp_path / "old.db")
    storage = f"sqlite:///{tmp_path}/old.db"
    hpsearch("export", "--study", "sst2-lr-dropout", "--storage", storage, "--output", "best.yaml", check=True)
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert set(exported["fixed"]) == set(HYPERPARAMETERS) and exported["fixed"]["micro_batch_size"] == 0
    hpsearch("report", "--study", "sst2-lr-dropout", "--storage", storage, "--output", "r.html", check=True)
    assert "train_time_s (s)" in (tmp_path / "r.html").read_text()

"""The Python API (hpsearch.run / load_space / export / train): the same functions the CLI calls, with spaces given
as files, mappings or Space objects and overrides as a mapping; and the README's Python example, run as written."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import hpsearch
from hpsearch.config.space import Space
from hpsearch.errors import ConfigError, UsageError
from tests.helpers import REPO, space_dict


def test_import_hpsearch_stays_light() -> None:
    """``import hpsearch`` (what the CLI's --help imports first) loads neither torch nor optuna."""
    code = "import sys, hpsearch; print('torch' in sys.modules, 'optuna' in sys.modules, callable(hpsearch.load_space))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]


def test_load_space_takes_a_file_a_mapping_or_a_space_with_mapping_overrides(tiny_model, tiny_data,
                                                                             make_space) -> None:
    raw = space_dict(tiny_model, tiny_data)
    from_file = hpsearch.load_space(make_space(), {"fixed.epochs": 1, "study.name": "from-file"})
    from_dict = hpsearch.load_space(raw, ["fixed.epochs=1"])
    assert from_file.fixed["epochs"] == from_dict.fixed["epochs"] == 1
    assert from_file.name == "from-file"
    again = hpsearch.load_space(from_dict, {"params.dropout": None})  # None removes a key, like --set KEY=null
    assert isinstance(again, Space) and list(again.params) == ["learning_rate"]
    assert list(from_dict.params) == ["learning_rate", "dropout"]  # the original is untouched
    with pytest.raises(ConfigError) as err:
        hpsearch.load_space(raw, {"fixed.epochs": 0, "fixed.batch_size": "large"})
    assert {i.key for i in err.value.issues} == {"fixed.epochs", "fixed.batch_size"}
    with pytest.raises(UsageError, match="not the string"):
        hpsearch.load_space(raw, "fixed.epochs=1")


def test_run_returns_the_study_and_export_then_train_write_a_model(tiny_model, tiny_data, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = space_dict(tiny_model, tiny_data, study__name="api")
    storage = f"sqlite:///{tmp_path / 'api.db'}"
    study = hpsearch.run(raw, trials=2, storage=storage, overrides={"fixed.epochs": 1}, device="cpu")
    assert isinstance(study, optuna.Study) and study.study_name == "api"
    assert len(study.trials) == 2 and all(t.user_attrs["hyperparameters"]["epochs"] == 1 for t in study.trials)
    # Resuming through the API adds trials to the same study, as the CLI does.
    assert len(hpsearch.run(raw, trials=1, storage=storage, overrides={"fixed.epochs": 1}).trials) == 3
    paths = hpsearch.export("api", tmp_path / "best.yaml", storage=storage)
    assert paths == [tmp_path / "best.yaml"]
    result = hpsearch.train(paths[0], tmp_path / "model", device="cpu")
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["metrics"] == result["metrics"]


def test_run_rejects_bad_arguments_before_touching_anything(tiny_model, tiny_data, tmp_path: Path) -> None:
    raw = space_dict(tiny_model, tiny_data)
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    for kwargs, message in (({}, "give trials=N"), ({"trials": 0}, "trials: must be an integer >= 1"),
                            ({"trials": 1, "workers": 2, "trials_per_gpu": 2}, "give one"),
                            ({"trials": 1, "heartbeat_interval": 10, "grace_period": 5}, "grace_period 5")):
        with pytest.raises(UsageError, match=message):
            hpsearch.run(raw, storage=storage, **kwargs)
    assert not (tmp_path / "x.db").exists()


def _readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    example = [b for b in blocks if "hpsearch.run(" in b]
    assert example, "README.md has no Python example calling hpsearch.run"
    return example[0]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    """The README's example, verbatim, from the repository root (it needs `make models`: the real MiniLM)."""
    if not (REPO / "models" / "all-MiniLM-L6-v2" / "config.json").is_file():
        pytest.skip("models/all-MiniLM-L6-v2 not made (make models)")
    code = _readme_python_example()
    env = {"HPSEARCH_STORAGE": f"sqlite:///{tmp_path / 'readme.db'}", "HPSEARCH_CACHE_DIR": str(tmp_path / "c"),
           "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # a core, as the suite's others
    proc = subprocess.run([sys.executable, "-c", code.replace("best-model", str(tmp_path / "best-model"))],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "best-model" / "config.json").is_file()

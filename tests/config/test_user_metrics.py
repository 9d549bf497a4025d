"""``study.metric: package.module:function``: checked at validation, computed from each evaluation's predictions,
through the CLI and the Python API."""
from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

import hpsearch
from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError
from tests.helpers import space_dict

MODULE = '''
def balanced_accuracy(predictions, references, scores=None, label_names=None):
    """The mean recall over the classes, by hand; records what it was given."""
    CALLS.append({"n": len(predictions), "scores": None if scores is None else scores.shape,
                  "names": label_names})
    recalls = []
    for c in set(references.tolist()):
        rows = references == c
        recalls.append(float((predictions[rows] == c).mean()))
    return sum(recalls) / len(recalls)

balanced_accuracy.greater_is_better = True
CALLS = []

def no_direction(predictions, references):
    return 0.5

def one_argument(predictions):
    return 0.5

def broken(predictions, references):
    raise KeyError("gold")

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def metric_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_metrics_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("metric, direction, expected", [
    ("no_such_module_xyz:f", None, "cannot import no_such_module_xyz: ModuleNotFoundError"),
    ("{m}:missing", None, "has no missing"),
    ("{m}:NOT_A_FUNCTION", None, "is not a function"),
    ("{m}:one_argument", "maximize", "must take (predictions, references)"),
    ("{m}:no_direction", None, "study.direction: is required with metric"),
    ("{m}:balanced_accuracy", "minimize", "contradicts {m}:balanced_accuracy, which declares maximize"),
])
def test_a_metric_function_is_checked_before_anything_runs(metric: str, direction, expected: str, metric_module,
                                                            tiny_model: Path, tiny_data: dict) -> None:
    study = {"metric": metric.format(m=metric_module), **({"direction": direction} if direction else {})}
    raw = space_dict(tiny_model, tiny_data, study__metric=study["metric"])
    if direction:
        raw["study"]["direction"] = direction
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert expected.format(m=metric_module) in str(err.value)


def test_a_task_without_predictions_refuses_a_metric_function(metric_module, tiny_model: Path,
                                                               tiny_data: dict) -> None:
    raw = space_dict(tiny_model, tiny_data, study__metric=f"{metric_module}:no_direction",
                     study__direction="maximize", data__task="causal_lm")
    raw["data"]["text_column"] = "sentence"
    with pytest.raises(ConfigError, match="task causal_lm has no predictions a metric function could score"):
        validate(raw)


def test_a_study_optimizes_the_metric_function(metric_module, tiny_model: Path, tiny_data: dict, hpsearch,
                                               tmp_path: Path) -> None:
    import importlib

    path = f"{metric_module}:balanced_accuracy"
    raw = space_dict(tiny_model, tiny_data, study__metric=path, fixed__epochs=1)
    space = validate(raw)
    assert space.study.direction == "maximize"  # declared by the function
    study = hpsearch_run(raw, tmp_path)
    calls = importlib.import_module(metric_module).CALLS
    assert calls and calls[-1]["scores"] == (64, 2) and calls[-1]["names"] == ["0", "1"]
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert t.value == t.user_attrs[f"val_{path}"]
            assert 0.0 <= t.value <= 1.0
    broken = space_dict(tiny_model, tiny_data, study__metric=f"{metric_module}:broken", study__direction="maximize",
                        fixed__epochs=1)
    file = tmp_path / "broken.yaml"
    import yaml

    file.write_text(yaml.safe_dump(broken))
    res = hpsearch("run", "--space", str(file), "--trials", "1", "--device", "cpu",
                   "--storage", f"sqlite:///{tmp_path}/b.db")
    assert res.returncode == 1 and f"study.metric {metric_module}:broken: KeyError: 'gold'" in res.stderr
    assert "Traceback" not in res.stderr


def hpsearch_run(raw: dict, tmp_path: Path) -> optuna.Study:
    return hpsearch.run(raw, trials=2, device="cpu", storage=f"sqlite:///{tmp_path}/u.db")

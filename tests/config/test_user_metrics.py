"""``study.metric: package.module:function``: checked at validation, computed from each evaluation's predictions,
through the CLI and the Python API."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
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

def not_a_number(predictions, references):
    return float("nan")

not_a_number.direction = "maximize"

def as_text(predictions, references):
    return "0.5"

def as_bool(predictions, references):
    return True

def as_none(predictions, references):
    return None

def as_numpy(predictions, references):
    import numpy
    return numpy.float32(0.25)

for f in (as_text, as_bool, as_none, as_numpy):
    f.direction = "maximize"

def mean_score(predictions, references, scores):
    """The mean probability of class 1: ``scores`` required (no default)."""
    return float(scores[:, 1].mean())

mean_score.direction = "maximize"

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
    ("{m}:mean_score@regression", "maximize", "requires scores, which task regression does not give"),
    ("{m}:no_direction", None, "study.direction: is required with metric"),
    ("{m}:balanced_accuracy", "minimize", "contradicts {m}:balanced_accuracy, which declares maximize"),
])
def test_a_metric_function_is_checked_before_anything_runs(metric: str, direction, expected: str, metric_module,
                                                            tiny_model: Path, tiny_data: dict) -> None:
    metric, _, task = metric.partition("@")
    study = {"metric": metric.format(m=metric_module), **({"direction": direction} if direction else {})}
    raw = space_dict(tiny_model, tiny_data, study__metric=study["metric"], data__task=task or "classification")
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
    res = hpsearch("run", "--space", str(file), "--trials", "5", "--device", "cpu",
                   "--storage", f"sqlite:///{tmp_path}/b.db")
    reason = f"study.metric {metric_module}:broken raised KeyError: 'gold'"
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (f"error: every trial so far (3) failed the same way: {reason}; fix "
                                                   f"the metric and run the same command again")
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/b.db").trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3  # each failed alone; the study went on, then stopped
    assert {t.user_attrs["fail_reason"] for t in trials} == {reason}
    assert {t.user_attrs["status"] for t in trials} == {"failed: metric"}


def test_a_metric_that_is_not_a_number_fails_its_trial_with_the_reason(metric_module, tiny_model: Path,
                                                                      tiny_data: dict, tmp_path: Path) -> None:
    nan = space_dict(tiny_model, tiny_data, study__metric=f"{metric_module}:not_a_number", fixed__epochs=1)
    study = hpsearch.run(nan, trials=1, device="cpu", storage=f"sqlite:///{tmp_path}/n.db")
    (trial,) = study.trials
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["fail_reason"] == f"study.metric {metric_module}:not_a_number returned nan"
    one_class = space_dict(tiny_model, tiny_data, study__metric="roc_auc", fixed__epochs=1,
                           data__validation={"path": str(_one_class(tiny_data, tmp_path)), "text_column": "content"})
    (trial,) = hpsearch.run(one_class, trials=1, device="cpu", storage=f"sqlite:///{tmp_path}/r.db").trials
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == (
        "roc_auc is nan: undefined here (the validation labels hold a single class, or lack one of the classes)")


def _one_class(tiny_data: dict, tmp_path: Path) -> Path:
    """The tiny validation file's rows of label 1 only."""
    lines = tiny_data["dev"].read_text().splitlines()
    path = tmp_path / "one_class.tsv"
    path.write_text("\n".join([lines[0]] + [line for line in lines[1:] if line.startswith("1\t")]) + "\n")
    return path


def hpsearch_run(raw: dict, tmp_path: Path) -> optuna.Study:
    return hpsearch.run(raw, trials=2, device="cpu", storage=f"sqlite:///{tmp_path}/u.db")


@pytest.mark.parametrize("name, says", [("as_text", "returned '0.5' (str), not a number"),
                                        ("as_bool", "returned 'True' (bool), not a number"),
                                        ("as_none", "returned 'None' (NoneType), not a number")])
def test_a_metric_function_s_result_must_be_a_real_number(metric_module, name: str, says: str) -> None:
    """Nothing is coerced: a text that reads as a number, a bool, None each fail the trial naming the function."""
    from hpsearch.config.metrics import MetricFailed, compute, load

    path = f"{metric_module}:{name}"
    given = {"predictions": np.array([0, 1]), "references": np.array([0, 1])}
    with pytest.raises(MetricFailed) as err:
        compute(path, load(path), given)
    assert str(err.value) == f"study.metric {path} {says}"
    assert compute(f"{metric_module}:as_numpy", load(f"{metric_module}:as_numpy"), given) == 0.25


def test_a_metric_function_that_requires_scores_gets_them(metric_module, tiny_model: Path, tiny_data: dict) -> None:
    """``scores`` without a default: accepted for a task that gives it (classification) and given."""
    from hpsearch.config.metrics import compute, load

    path = f"{metric_module}:mean_score"
    assert validate(space_dict(tiny_model, tiny_data, study__metric=path)).study.direction == "maximize"
    scores = np.array([[0.2, 0.8], [0.6, 0.4]])
    given = {"predictions": np.array([1, 0]), "references": np.array([1, 1]), "scores": scores, "label_names": []}
    assert compute(path, load(path), given) == pytest.approx(0.6)

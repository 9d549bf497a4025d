"""The space file: shipped files validate, every bad input is named, overrides, suggestion."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.config.files import apply_overrides
from hpsearch.config.load import load_space
from hpsearch.config.validation import validate
from hpsearch.config.vocabulary import HYPERPARAMETERS, SCHEDULERS
from hpsearch.errors import ConfigError
from tests.helpers import REPO, space_dict

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_validates_and_opens_with_its_command(path: Path, tiny_model: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# hpsearch run --space search_spaces/" + path.name), first
    # The shipped files point at ./models (made by `make models`); validate against the tiny model instead
    # so the test needs no download, and check everything else in the file as shipped.
    overrides = [f"model.name_or_path={tiny_model}"]
    if "num_frozen_layers" in yaml.safe_load(path.read_text())["params"]:
        overrides.append("params.num_frozen_layers.high=2")  # the tiny model has 2 layers, MiniLM 6
    space = load_space(path, overrides)
    assert space.params, "a shipped space searches something"
    assert set(space.fixed) | set(space.params) == set(HYPERPARAMETERS)


def test_full_space_searches_all_seven() -> None:
    params = yaml.safe_load((REPO / "search_spaces" / "full.yaml").read_text())["params"]
    assert {"learning_rate", "batch_size", "epochs", "dropout", "weight_decay", "scheduler",
            "num_frozen_layers"} <= set(params)


def test_schedulers_exist_in_transformers() -> None:
    from transformers import SchedulerType

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def _issues(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw, "space.yaml")
    assert str(info.value).startswith("space.yaml:")
    return [str(i) for i in info.value.issues]


def _keys(raw: dict) -> set[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw, "space.yaml")
    return {i.key for i in info.value.issues}


BAD = {
    "unknown top key": ({"trainer": {}}, "trainer"),
    "unknown nested key": ({"model__max_lenght": 64}, "model.max_lenght"),
    "wrong type": ({"model__max_length": "long"}, "model.max_length"),
    "low > high": ({"params__dropout": {"type": "float", "low": 0.3, "high": 0.1}}, "params.dropout.low"),
    "log with low <= 0": ({"params__learning_rate": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}},
                          "params.learning_rate.low"),
    "empty choices": ({"params__batch_size": {"type": "categorical", "choices": []}}, "params.batch_size.choices"),
    "both params and fixed": ({"fixed__dropout": 0.1}, "fixed.dropout"),
    "unknown sampler": ({"study__sampler": {"name": "bayes"}}, "study.sampler.name"),
    "unknown sampler option": ({"study__sampler": {"name": "tpe", "options": {"n_startup": 3}}},
                               "study.sampler.options.n_startup"),
    "unknown pruner": ({"study__pruner": {"name": "early"}}, "study.pruner.name"),
    "unknown scheduler": ({"fixed__scheduler": "cosinus"}, "fixed.scheduler"),
    "unknown metric": ({"study__metric": "auc"}, "study.metric"),
    "metric of the other task": ({"study__metric": "mse"}, "study.metric"),
    "direction contradicts metric": ({"study__direction": "minimize"}, "study.direction"),
    "unknown hyperparameter": ({"params__momentum": {"type": "float", "low": 0.1, "high": 0.9}}, "params.momentum"),
    "int param for a float hp": ({"params__dropout": {"type": "int", "low": 0, "high": 1}}, "params.dropout.type"),
    "scheduler searched as float": ({"params__scheduler": {"type": "float", "low": 0, "high": 1}},
                                    "params.scheduler.type"),
    "missing type": ({"params__weight_decay": {"low": 0.0, "high": 0.1}}, "params.weight_decay.type"),
    "dropout out of range": ({"params__dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "params.dropout.high"),
    "epochs zero": ({"fixed__epochs": 0}, "fixed.epochs"),
    "log and step": ({"params__learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True,
                                                "step": 1e-5}}, "params.learning_rate.step"),
    "enqueue a fixed name": ({"study__enqueue": [{"batch_size": 16}]}, "study.enqueue[0].batch_size"),
    "enqueue out of range": ({"study__enqueue": [{"dropout": 0.9}]}, "study.enqueue[0].dropout"),
    "grid without step": ({"study__sampler": {"name": "grid"}}, "params.learning_rate.step"),
    "gp sampler with a pruner": ({"study__sampler": {"name": "gp"}}, "study.pruner.name"),
    "percentile without percentile": ({"study__pruner": {"name": "percentile"}},
                                      "study.pruner.options.percentile"),
    "patient without patience": ({"study__pruner": {"name": "patient"}}, "study.pruner.options.patience"),
    "patient wrapping a bad pruner": ({"study__pruner": {"name": "patient", "options": {"patience": 1},
                                                         "wrapped": {"name": "median", "options": {"warmup": 1}}}},
                                      "study.pruner.wrapped.options.warmup"),
    "wrapped on another pruner": ({"study__pruner": {"name": "median", "wrapped": "median"}},
                                  "study.pruner.wrapped"),
    "early stopping without patience": ({"study__early_stopping": {"min_delta": 0.1}},
                                        "study.early_stopping.patience"),
    "unknown trial value": ({"study__trial_value": "mean"}, "study.trial_value"),
    "missing train": ({"data__train": None}, "data.train"),
    "missing model": ({"model__name_or_path": None}, "model.name_or_path"),
    "bad task": ({"data__task": "ner"}, "data.task"),
    "negative samples": ({"data__max_train_samples": 0}, "data.max_train_samples"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_bad_input_names_the_key(case: str, tiny_model: Path, tiny_data: dict) -> None:
    overrides, key = BAD[case]
    raw = space_dict(tiny_model, tiny_data, **overrides)
    if raw["data"].get("train") is None:
        del raw["data"]["train"]
    if raw["model"].get("name_or_path") is None:
        del raw["model"]["name_or_path"]
    assert key in _keys(raw)


def test_missing_file_and_column_are_named(tiny_model: Path, tiny_data: dict, tmp_path: Path) -> None:
    raw = space_dict(tiny_model, tiny_data)
    raw["data"]["train"]["path"] = str(tmp_path / "absent.csv")
    raw["data"]["validation"]["text_column"] = "sentence"  # dev.tsv calls it 'content'
    issues = _issues(raw)
    assert any(i.startswith("data.train.path: no such file") for i in issues), issues
    assert any(i.startswith("data.validation.text_column") and "content" in i for i in issues), issues


def test_every_problem_is_reported_at_once(tiny_model: Path, tiny_data: dict) -> None:
    raw = space_dict(tiny_model, tiny_data, study__metric="auc", fixed__epochs=0, model__max_lenght=3,
                     params__dropout={"type": "float", "low": 0.3, "high": 0.1})
    assert {"study.metric", "fixed.epochs", "model.max_lenght", "params.dropout.low"} <= _keys(raw)


def test_error_repeats_the_bad_value(tiny_model: Path, tiny_data: dict) -> None:
    issues = _issues(space_dict(tiny_model, tiny_data, study__sampler={"name": "tpee"}))
    assert any("'tpee'" in i and "did you mean 'tpe'" in i for i in issues), issues


def test_frozen_layers_beyond_the_model(tiny_model: Path, tiny_data: dict) -> None:
    assert "fixed.num_frozen_layers" in _keys(space_dict(tiny_model, tiny_data, fixed__num_frozen_layers=3))
    raw = space_dict(tiny_model, tiny_data, params__num_frozen_layers={"type": "int", "low": 0, "high": 5})
    assert "params.num_frozen_layers.high" in _keys(raw)
    validate(space_dict(tiny_model, tiny_data, fixed__num_frozen_layers=2))  # 2 of 2 layers is allowed


def test_model_path_that_does_not_exist(tiny_model: Path, tiny_data: dict) -> None:
    assert "model.name_or_path" in _keys(space_dict(tiny_model, tiny_data, model__name_or_path="./no/such/dir"))
    # a hub id is left for load time: validation downloads nothing
    validate(space_dict(tiny_model, tiny_data, model__name_or_path="bert-base-uncased"))


def test_yaml_exponent_without_dot_is_a_number(tiny_model: Path, tiny_data: dict, tmp_path: Path) -> None:
    raw = space_dict(tiny_model, tiny_data)
    text = yaml.safe_dump(raw).replace("0.0001", "1e-4")
    assert "1e-4" in text
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert load_space(path).params["learning_rate"]["low"] == pytest.approx(1e-4)


def test_set_overrides_nested_keys_and_validates(make_space) -> None:
    path = make_space()
    space = load_space(path, ["fixed.epochs=3", "data.max_train_samples=50", "study.sampler.seed=7"])
    assert space.fixed["epochs"] == 3 and space.data.max_train_samples == 50
    assert space.study.sampler.seed == 7
    with pytest.raises(ConfigError) as info:
        load_space(path, ["fixed.epochs=-1"])
    assert [i.key for i in info.value.issues] == ["fixed.epochs"]


def test_reports_per_epoch_defaults_to_one_whole_validation_report_per_epoch(tiny_model: Path, tiny_data: dict) -> None:
    def reports(**study: object) -> int:
        raw = space_dict(tiny_model, tiny_data)
        del raw["study"]["reports_per_epoch"]
        raw["study"].update(study)
        return validate(raw, "space.yaml").study.reports_per_epoch

    assert reports() == 1  # median pruner: it compares epoch-end checkpoints (bench/README.md, search levers)
    assert reports(pruner="none") == 1  # once per epoch, like Trainer's eval_strategy="epoch"
    assert reports(pruner="none", reports_per_epoch=3) == 3  # asked for (learning curves): honored


def test_set_null_removes_and_bad_syntax_is_reported() -> None:
    assert apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=null"]) == {"a": {"c": 2}}
    assert apply_overrides({}, ["x.y.z=[1, 2]"]) == {"x": {"y": {"z": [1, 2]}}}
    with pytest.raises(ConfigError) as info:
        apply_overrides({"a": 1}, ["novalue", "a.b=3", "k=[unclosed"])
    assert len(info.value.issues) == 3


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(path) in str(info.value) and "YAML" in str(info.value)


def test_suggest_returns_every_hyperparameter_in_range(make_space) -> None:
    space = load_space(make_space())
    hp = space.suggest(optuna.trial.FixedTrial({"learning_rate": 2e-4, "dropout": 0.05}))
    assert set(hp.as_dict()) == set(HYPERPARAMETERS)
    assert hp.learning_rate == 2e-4 and hp.dropout == 0.05 and hp.batch_size == 16


def test_with_params_leaves_nothing_to_search(make_space) -> None:
    space = load_space(make_space())
    fixed = space.with_params({"learning_rate": 1e-3, "dropout": 0.0}, origin={"study": "s", "trial": 3})
    assert fixed.params == {} and fixed.fixed["learning_rate"] == 1e-3 and fixed.config["origin"]["trial"] == 3
    assert validate(fixed.to_dict()).fixed == fixed.fixed  # an exported config is itself a valid space


def test_validation_imports_neither_torch_nor_transformers(make_space) -> None:
    code = ("import sys; from hpsearch.config.load import load_space; load_space(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(make_space())], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Conditional hyperparameters (`when:`): checked at validation, not sampled, stored or exported when inactive."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError
from hpsearch.study import record
from tests.helpers import REPO, space_dict

LORA = {"lora_r": {"type": "categorical", "choices": [0, 4, 8]},
        "lora_alpha": {"type": "categorical", "choices": [8, 16], "when": "lora_r > 0"},
        "lora_target_modules": {"type": "categorical", "choices": ["all-linear", ["query", "value"]],
                                "when": "lora_r > 0"},
        "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}}


def _space(tiny_model: Path, tiny_data: dict, params: dict = LORA, **overrides: object) -> dict:
    raw = space_dict(tiny_model, tiny_data, **overrides)
    raw["params"] = params
    raw["fixed"] = {**raw["fixed"], "lora_dropout": {"value": 0.1, "when": "lora_r > 0"}}
    return raw


def _problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate(raw)
    return str(err.value)


def test_inactive_params_are_not_sampled_and_default_in_training(tiny_model: Path, tiny_data: dict) -> None:
    space = validate(_space(tiny_model, tiny_data))
    assert space.config["when"] == {"lora_alpha": "lora_r > 0", "lora_target_modules": "lora_r > 0",
                                    "lora_dropout": "lora_r > 0"}
    assert validate(space.to_dict()).config == space.config  # the normalized form is a valid file
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        hp = space.suggest(trial)
        study.tell(trial, 0.5)
        seen.add(hp.lora_r)
        if hp.lora_r == 0:
            assert set(trial.params) == {"lora_r", "learning_rate"}
            assert (hp.lora_alpha, hp.lora_dropout) == (16, 0.0)  # the defaults, which full fine-tuning ignores
            assert space.inactive(hp) == {"lora_alpha", "lora_target_modules", "lora_dropout"}
        else:
            assert {"lora_alpha", "lora_target_modules"} <= set(trial.params) and hp.lora_dropout == 0.1
            assert space.inactive(hp) == set()
    assert seen == {0, 4, 8}
    full = space.with_params({"lora_r": 0, "learning_rate": 1e-3}).to_dict()
    assert "lora_alpha" not in full["fixed"] and "lora_dropout" not in full["fixed"] and "when" not in full
    lora = space.with_params({"lora_r": 4, "lora_alpha": 8, "lora_target_modules": "all-linear",
                              "learning_rate": 1e-3}).to_dict()
    assert lora["fixed"]["lora_alpha"] == 8 and lora["fixed"]["lora_dropout"] == 0.1
    assert validate(full).fixed["lora_r"] == 0  # the export is a valid config with nothing left to search


@pytest.mark.parametrize("change, expected", [
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "lora_rank > 0"}},
     "params.lora_alpha.when: names 'lora_rank', not a hyperparameter (did you mean lora_r?)"),
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "lora_alpha > 0"}}, "cannot depend on itself"),
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "lora_r > 8"}},
     "can never hold: 'lora_r > 8' is false for its choices"),
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "lora_r >> 0"}},
     "cannot read the value '> 0' in 'lora_r >> 0'"),
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "scheduler in linear"}}, "in takes a list"),
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "epochs > 3"}},
     "can never hold: 'epochs > 3' is false for its fixed value 2"),
    ({"lora_alpha": {"type": "categorical", "choices": [8], "when": "learning_rate < 1.0e-5"}},
     "is false for its range"),
    ({"lora_r": {"type": "categorical", "choices": [0, 4], "when": "lora_alpha > 8"},
      "lora_alpha": {"type": "categorical", "choices": [8, 16], "when": "lora_r > 0"}},
     "cycle: "),
])
def test_a_bad_condition_is_named_with_its_key(change: dict, expected: str, tiny_model: Path, tiny_data: dict) -> None:
    assert expected in _problems(_space(tiny_model, tiny_data, {**LORA, **change}))


def test_a_grid_and_a_doubled_condition_are_refused(tiny_model: Path, tiny_data: dict) -> None:
    raw = _space(tiny_model, tiny_data, study__sampler={"name": "grid"})
    raw["params"]["learning_rate"] = {"type": "categorical", "choices": [1e-3]}
    assert "cannot search conditional parameters" in _problems(raw)
    raw = _space(tiny_model, tiny_data)
    raw["when"] = {"lora_alpha": "lora_r > 4"}
    assert "when.lora_alpha: lora_alpha already has a condition at params.lora_alpha.when" in _problems(raw)


def test_a_conditional_study_stores_and_exports_only_active_params(tiny_model: Path, tiny_data: dict, hpsearch,
                                                                    tmp_path: Path) -> None:
    raw = _space(tiny_model, tiny_data, fixed__epochs=1, study__enqueue=[
        {"lora_r": 0, "learning_rate": 1e-3}, {"lora_r": 4, "lora_alpha": 16, "lora_target_modules": "all-linear",
                                               "learning_rate": 1e-3}])
    file = tmp_path / "cond.yaml"
    file.write_text(yaml.safe_dump(raw))
    hpsearch("run", "--space", str(file), "--trials", "2", "--device", "cpu", check=True)
    full, lora = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db").trials
    assert set(full.params) == {"lora_r", "learning_rate"} and "lora_alpha" not in full.user_attrs[
        record.HYPERPARAMETERS]
    assert lora.params["lora_alpha"] == 16 and lora.user_attrs[record.HYPERPARAMETERS]["lora_dropout"] == 0.1
    out = tmp_path / "best.yaml"
    hpsearch("export", "--study", "tiny", "--output", str(out), "--top", "2", check=True)
    exported = [yaml.safe_load(p.read_text()) for p in sorted(tmp_path.glob("best*.yaml"))]
    by_r = {e["fixed"]["lora_r"]: e for e in exported}
    assert "lora_alpha" not in by_r[0]["fixed"] and by_r[4]["fixed"]["lora_alpha"] == 16


def test_the_shipped_lora_space_is_conditional() -> None:
    text = (REPO / "search_spaces" / "lora.yaml").read_text()
    raw = yaml.safe_load(text)
    raw["model"]["name_or_path"] = "org/model"  # a hub id: validation reads no weights
    space = validate(raw)
    assert set(space.config["when"]) == {"lora_alpha", "lora_target_modules", "lora_dropout"}

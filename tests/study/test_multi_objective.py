"""Several objectives (``study.metrics``): checked at validation, no pruning (Optuna prunes single-objective
studies only), the Pareto front in ``trials``, the CLI's summary, the report and ``export --pareto``, whose configs
retrain to their stored values."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError
from hpsearch.study import record


@pytest.mark.parametrize("study, expected", [
    ({"metrics": ["accuracy", "latency_ms"], "metric": "f1"}, "give study.metric (one objective) or "
                                                               "study.metrics (several), not both"),
    ({"metrics": ["accuracy", "latency_ms"], "directions": ["maximize", "maximize"]}, "contradicts the metrics'"),
    ({"metrics": ["accuracy"]}, "must be a list of two or more metric names"),
    ({"metrics": ["accuracy", "latency"]}, "study.metrics[1]: is not a metric of this task"),
    ({"metrics": ["latency_ms", "parameters"]}, "needs at least one evaluated metric"),
    ({"metrics": ["accuracy", "latency_ms"], "sampler": {"name": "cmaes"}}, "takes one objective"),
    ({"metrics": ["accuracy", "latency_ms"], "pruner": {"name": "median"}}, "Optuna prunes single-objective"),
    ({"metrics": ["accuracy", "latency_ms"], "confirm": {"top_k": 2, "folds": 2}}, "ranks one objective"),
])
def test_objectives_are_checked(study: dict, expected: str, setup) -> None:
    space, _ = setup
    raw = space.to_dict()
    raw["study"] = {k: v for k, v in raw["study"].items() if k not in ("metric", "direction", "pruner", "confirm")}
    raw["study"].update(study)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        validate(raw)


def test_a_two_objective_study_its_front_and_its_exports(make_space, hpsearch, tmp_path: Path) -> None:
    space = make_space(study__metrics=["accuracy", "latency_ms"], study__pruner=None,
                       study__sampler={"name": "tpe", "seed": 1}, fixed__epochs=1)
    raw = yaml.safe_load(space.read_text())
    raw["study"].pop("pruner")
    raw["study"].pop("metric")
    space.write_text(yaml.safe_dump(raw))
    normalized = validate(raw).study
    assert normalized.directions == ("maximize", "minimize") and normalized.pruner.name == "none"
    res = hpsearch("run", "--space", str(space), "--trials", "5", "--device", "cpu", check=True)
    assert "Pareto front:" in res.stdout
    url = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert record.objectives(study) == ["accuracy", "latency_ms"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 5 and all(len(t.values) == 2 and t.values[1] == pytest.approx(t.user_attrs["latency_ms"],
                                                                                    abs=1e-4) for t in done)
    assert all(t.intermediate_values == {} for t in done)  # no reports, no pruning
    front = record.ranked_trials(study)
    assert {t.number for t in front} == {t.number for t in study.best_trials}
    table = hpsearch("trials", "--study", "tiny", check=True, env={"COLUMNS": "200"}).stdout
    assert "latency_ms" in table and "pareto" in table
    hpsearch("report", "--study", "tiny", "--output", str(tmp_path / "r.html"), check=True)
    assert "Pareto front: accuracy, latency_ms" in (tmp_path / "r.html").read_text()
    written = hpsearch("export", "--study", "tiny", "--output", str(tmp_path / "front.yaml"), "--pareto",
                       check=True).stdout.split()
    assert len(written) == len(front)
    exported = [yaml.safe_load(Path(p).read_text()) for p in written]
    assert [e["origin"]["trial"] for e in exported] == [t.number for t in front]
    first = exported[0]
    assert first["origin"]["values"]["accuracy"] == front[0].values[0] and first["params"] == {}
    # retrained, the first front config reaches its stored accuracy within one standard error (CPU: exactly)
    hpsearch("train", "--config", written[0], "--output-dir", str(tmp_path / "m"), "--device", "cpu", check=True)
    accuracy = json.loads((tmp_path / "m" / "metrics.json").read_text())["metrics"]["accuracy"]
    p, n = front[0].values[0], front[0].user_attrs[record.VALIDATION_ROWS]
    assert abs(accuracy - p) <= (p * (1 - p) / n) ** 0.5 + 1e-9
    refused = hpsearch("run", "--space", str(space), "--trials", "1", "--device", "cpu", "--keep-best")
    assert refused.returncode == 2 and "--keep-best with study.metrics" in refused.stderr


def test_pareto_export_needs_several_objectives(make_space, hpsearch, tmp_path: Path) -> None:
    hpsearch("run", "--space", str(make_space(fixed__epochs=1)), "--trials", "1", "--device", "cpu", check=True)
    res = hpsearch("export", "--study", "tiny", "--output", str(tmp_path / "x.yaml"), "--pareto")
    assert res.returncode == 2 and "has one objective" in res.stderr


def test_the_python_api_takes_conditions_constraints_and_objectives(tiny_model: Path, tiny_data: dict,
                                                                     tmp_path: Path) -> None:
    """One space through ``hpsearch.run`` and ``hpsearch.export`` with a condition, a constraint and two
    objectives: what the CLI tests check, from Python."""
    import hpsearch
    from tests.helpers import space_dict

    raw = space_dict(tiny_model, tiny_data, fixed__epochs=1, study__pruner={"name": "none"},
                     study__metrics=["accuracy", "trainable_parameters"], study__constraints=["train_time_s <= 600"])
    raw["study"].pop("metric")
    raw["params"] = {"lora_r": {"type": "categorical", "choices": [0, 4]},
                     "lora_alpha": {"type": "categorical", "choices": [8, 16], "when": "lora_r > 0"},
                     "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3}}
    storage = f"sqlite:///{tmp_path}/api.db"
    study = hpsearch.run(raw, trials=4, storage=storage, device="cpu")
    assert record.is_multi(study) and all(t.constraints == {"train_time_s <= 600": pytest.approx(
        t.user_attrs["train_time_s"] - 600)} for t in study.trials)
    for t in study.trials:
        assert ("lora_alpha" in t.params) == (t.params["lora_r"] > 0)
        assert t.values[1] == t.user_attrs["trainable_parameters"]
    paths = hpsearch.export("tiny", tmp_path / "front.json", storage=storage, pareto=True)
    assert len(paths) == len(study.best_trials) and all(p.suffix == ".json" for p in paths)

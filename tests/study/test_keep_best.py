"""--keep-best and export --model through the CLI: the best K trials' weights kept, exported, loadable."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from hpsearch.study.artifacts import model_artifact_ids


def test_keep_best_keeps_the_top_k_and_export_writes_a_loadable_model(make_space, hpsearch, tmp_path: Path) -> None:
    space = make_space(fixed__epochs=1, study__pruner="none")
    hpsearch("run", "--space", str(space), "--trials", "5", "--quiet", "--keep-best", "2", check=True)
    storage = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.load_study(study_name="tiny", storage=storage)
    store = tmp_path / "studies-artifacts"  # the default: beside the SQLite file
    assert study.user_attrs["artifacts"] == str(store)
    ranked = sorted(study.trials, key=lambda t: t.value, reverse=True)
    present = {t.number for t in study.trials for a in model_artifact_ids(t) if (store / a).is_file()}
    assert present == {t.number for t in ranked[:2]}, [(t.number, t.value) for t in ranked]
    assert len(list(store.iterdir())) == 2  # the models that dropped out of the top 2 were removed

    out = hpsearch("export", "--study", "tiny", "--output", "best.yaml", "--model", "best-model", check=True)
    assert out.stdout.split() == ["best.yaml", "best-model"]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = tmp_path / "best-model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.id2label == {0: "0", 1: "1"} and AutoTokenizer.from_pretrained(model_dir) is not None
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["origin"]["trial"] == ranked[0].number
    assert metrics["metrics"]["accuracy"] == pytest.approx(ranked[0].value)
    assert (model_dir / "hpsearch_config.yaml").read_text().startswith("# hpsearch train --config")

    # The kept weights are the trial's own: evaluating them gives the trial's value.
    from hpsearch.config.load import load_space
    from hpsearch.finetune import evaluation as E
    from hpsearch.finetune.data import prepare
    from hpsearch.finetune.model import load_tokenizer

    exported = load_space(tmp_path / "best.yaml")
    data = prepare(exported.data, load_tokenizer(exported.model), 32)
    again = E.evaluate(model, data.validation, data, torch.device("cpu"))
    assert again["accuracy"] == pytest.approx(ranked[0].value)


def test_export_model_of_a_trial_without_kept_weights_writes_nothing(make_space, hpsearch, tmp_path: Path) -> None:
    hpsearch("run", "--space", str(make_space(fixed__epochs=1)), "--trials", "1", "--quiet", check=True)
    res = hpsearch("export", "--study", "tiny", "--output", "best.yaml", "--model", "m")
    assert res.returncode == 2 and "--keep-best" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "best.yaml").exists() and not (tmp_path / "m").exists()


def test_early_stopping_through_the_cli_records_where_and_why(make_space, hpsearch, tmp_path: Path) -> None:
    space = make_space(fixed__epochs=6, study__pruner="none", study__reports_per_epoch=1,
                       study__early_stopping={"patience": 1, "min_delta": 1.0})
    hpsearch("run", "--space", str(space), "--trials", "1", "--quiet", check=True)
    trial = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db").trials[0]
    attrs = trial.user_attrs
    assert attrs["stopped_early"] is True and attrs["epochs_completed"] == 2.0 and attrs["best_report"] == 1
    assert attrs["status"].startswith("completed (stopped early at epoch 2.00")
    assert trial.value == attrs["best_value"] == attrs["val_accuracy"]

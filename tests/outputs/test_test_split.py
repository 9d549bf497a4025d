"""``data.test``: scored once by ``train`` and ``export --model`` (metrics.json, the study, the report), never used
to choose; the report's standard errors and the leaders within noise of the best."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import yaml

from hpsearch.study import record
from tests.helpers import sentences


def _test_file(tmp_path: Path, rows: list[list]) -> Path:
    path = tmp_path / "test.tsv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None)
        w.writerow(["label", "sentence"])
        w.writerows(rows)
    return path


def test_train_scores_the_test_split_once(make_space, hpsearch, tmp_path: Path) -> None:
    test = _test_file(tmp_path, sentences(40, 7))
    space = make_space(data__test={"path": str(test), "text_column": "sentence"}, params={}, fixed__epochs=1,
                       fixed__learning_rate=1e-3)
    hpsearch("train", "--config", str(space), "--output-dir", str(tmp_path / "model"), "--device", "cpu",
             check=True)
    stored = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert set(stored["test_metrics"]) >= {"accuracy", "f1", "eval_loss"}
    assert stored["test_metrics"] != stored["metrics"]  # other rows: another score
    bad = _test_file(tmp_path, [[1, "good fun"], [7, "odd"]])
    bad_space = make_space("bad.yaml", data__test={"path": str(bad), "text_column": "sentence"}, params={},
                           fixed__epochs=1)
    res = hpsearch("train", "--config", str(bad_space), "--output-dir", str(tmp_path / "model2"), "--device", "cpu")
    assert res.returncode == 2 and "data.test" in res.stderr and "row 2: label 7 never occurs" in res.stderr
    assert not (tmp_path / "model2").exists()  # checked before training: nothing written


def test_export_scores_kept_models_and_the_report_shows_noise(make_space, hpsearch, tmp_path: Path) -> None:
    test = _test_file(tmp_path, sentences(40, 7))
    space = make_space(data__test={"path": str(test), "text_column": "sentence"}, fixed__epochs=1)
    url = f"sqlite:///{tmp_path}/studies.db"
    hpsearch("run", "--space", str(space), "--trials", "4", "--device", "cpu", "--keep-best", "2", check=True)
    study = optuna.load_study(study_name="tiny", storage=url)
    chosen = record.ranked_trials(study)[:2]
    hpsearch("export", "--study", "tiny", "--output", str(tmp_path / "best.yaml"), "--top", "2",
             "--model", str(tmp_path / "best-model"), check=True)
    scores = record.test_scores(optuna.load_study(study_name="tiny", storage=url))
    assert sorted(scores) == sorted(t.number for t in chosen)
    for i, t in enumerate(chosen, 1):
        stored = json.loads((tmp_path / f"best-model-{i}" / "metrics.json").read_text())
        assert stored["test_metrics"] == scores[t.number]
    assert [t.number for t in record.ranked_trials(optuna.load_study(study_name="tiny", storage=url))[:2]] == [
        t.number for t in chosen]  # the test score chose nothing
    assert yaml.safe_load((tmp_path / "best-1.yaml").read_text())["data"]["test"]["path"] == str(test)
    report = tmp_path / "report.html"
    hpsearch("report", "--study", "tiny", "--output", str(report), check=True)
    html = report.read_text()
    assert "standard error" in html and "within noise of the best" in html and "test (export --model)" in html
    best = chosen[0]
    n = best.user_attrs[record.VALIDATION_ROWS]
    assert n == 64 and f"{(best.value * (1 - best.value) / n) ** 0.5:.4f}" in html


def test_noise_arithmetic() -> None:
    assert record.within_noise(0.80, 0.02, 0.76, 0.02) is True  # 0.04 <= 2 * 0.028
    assert record.within_noise(0.80, 0.01, 0.75, 0.01) is False  # 0.05 > 2 * 0.014
    assert record.within_noise(0.80, None, 0.75, 0.01) is None

"""study.confirm: the best trials confirmed on cross-validation folds before one is chosen."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.config.sections import Confirm
from hpsearch.config.validation import validate
from hpsearch.study.record import confirmations, ranked_trials
from tests.helpers import space_dict


def test_confirm_through_the_cli_chooses_by_the_fold_score(make_space, hpsearch, tmp_path: Path) -> None:
    space = make_space(fixed__epochs=1, study__pruner="none", study__confirm={"top_k": 2, "folds": 2})
    res = hpsearch("run", "--space", str(space), "--trials", "4", "--keep-best", "1", check=True)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    by_value = sorted(study.trials, key=lambda t: t.value, reverse=True)
    done = confirmations(study)
    assert set(done) == {t.number for t in by_value[:2]}
    for number, made in done.items():
        assert made["values"][0] == study.trials[number].value and len(made["values"]) == 3
        assert made["score"] == pytest.approx(sum(made["values"]) / 3)
        assert f"confirmed trial {number}:" in res.stderr
    chosen = max(done, key=lambda n: done[n]["score"])
    assert ranked_trials(study)[0].number == chosen
    assert f"chosen trial {chosen}:" in res.stdout and f"confirmed {done[chosen]['score']:.4f}" in res.stdout

    # Export follows the confirmation, and --keep-best kept exactly the chosen trial's weights.
    hpsearch("export", "--study", "tiny", "--output", "best.yaml", "--model", "best-model", check=True)
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["origin"]["trial"] == chosen and exported["origin"]["confirmed"]["score"] == done[chosen]["score"]
    assert len(list((tmp_path / "studies-artifacts").iterdir())) == 1

    hpsearch("report", "--study", "tiny", "--output", "report.html", check=True)
    table = (tmp_path / "report.html").read_text().split("<h2>Top")[1]
    assert "confirmed (folds)" in table and table.index(f"<td>{chosen}</td>") < min(
        table.index(f"<td>{n}</td>") for n in done if n != chosen)


def test_confirm_options_are_checked(make_space, hpsearch) -> None:
    res = hpsearch("validate", "--space", str(make_space(study__confirm={"top_k": 0, "folds": "two"})))
    assert res.returncode == 2
    assert "study.confirm.top_k" in res.stderr and "study.confirm.folds" in res.stderr and "two" in res.stderr


def test_confirm_is_off_unless_asked_and_true_means_the_defaults(tiny_model, tiny_data) -> None:
    assert validate(space_dict(tiny_model, tiny_data)).study.confirm is None
    assert validate(space_dict(tiny_model, tiny_data, study__confirm=True)).study.confirm == Confirm(3, 2)
    assert validate(space_dict(tiny_model, tiny_data, study__confirm={"folds": 1})).study.confirm == Confirm(3, 1)
    assert validate(space_dict(tiny_model, tiny_data, study__confirm=False)).study.confirm is None

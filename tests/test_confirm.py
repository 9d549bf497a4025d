"""study.confirm: cross-validation folds of the data, and the best trials confirmed on them before choosing."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml

from hpsearch.confirm import ATTR, confirmations
from hpsearch.data import Encoded, PreparedData, concat
from hpsearch.exporter import ranked_trials


def _split(n: int, width: int, start: int, per_token: bool = False) -> Encoded:
    lengths = torch.arange(n) % (width - 1) + 2
    ids = torch.zeros(n, width, dtype=torch.int64)
    for i, length in enumerate(lengths.tolist()):
        ids[i, :length] = start + i
    labels = torch.full((n, width), -100) if per_token else torch.arange(start, start + n)
    if per_token:
        for i, length in enumerate(lengths.tolist()):
            labels[i, :length] = start + i
    return Encoded(ids, lengths, labels)


@pytest.mark.parametrize("per_token", [False, True])
def test_fold_moves_a_training_block_to_validation_and_the_validation_rows_to_training(per_token: bool) -> None:
    data = PreparedData(train=_split(30, 5, 0, per_token), validation=_split(8, 9, 1000, per_token),
                        task="classification", label_names=["a", "b"])
    row_ids = lambda e: e.input_ids[:, 0].tolist()  # noqa: E731  each row's ids are its number
    seen_validation = []
    for k in (1, 2, 3):
        fold = data.fold(k, 3)
        assert row_ids(fold.validation) == list(range((k - 1) * 7, k * 7))  # min(8, 30 // 4) = 7 rows per block
        assert sorted(row_ids(fold.train)) == sorted(set(range(30)) - set(row_ids(fold.validation))) + list(
            range(1000, 1008))
        assert len(fold.train) + len(fold.validation) == 38 and fold.train.input_ids.shape[1] == 9
        # Rows keep their tokens and lengths; padding beyond a row's length is ignored (ids 0, labels -100).
        for e in (fold.train, fold.validation):
            for ids, length, label in zip(e.input_ids, e.lengths, e.labels):
                assert (ids[:length] == ids[0]).all()
                if per_token:
                    assert (label[:length] == ids[0]).all() and (label[length:] == -100).all()
                else:
                    assert label == ids[0]
        seen_validation += row_ids(fold.validation)
    assert len(set(seen_validation)) == 21  # disjoint blocks
    with pytest.raises(Exception, match="fold 4 of 3"):
        data.fold(4, 3)


def test_concat_keeps_token_types_and_target_lengths() -> None:
    a, b = _split(3, 4, 0), _split(2, 6, 10)
    a.token_type_ids, b.token_type_ids = torch.ones(3, 4, dtype=torch.int64), torch.ones(2, 6, dtype=torch.int64)
    a.label_lengths, b.label_lengths = torch.tensor([1, 2, 3]), torch.tensor([4, 5])
    both = concat([a, b])
    assert both.token_type_ids.shape == (5, 6) and both.token_type_ids[:3, 4:].eq(0).all()
    assert both.label_lengths.tolist() == [1, 2, 3, 4, 5] and both.lengths.tolist() == [*a.lengths, *b.lengths]


def test_ranking_puts_confirmed_trials_first_by_their_score() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.90, 0.85, 0.80, 0.95):
        study.enqueue_trial({"x": value})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    assert [t.number for t in ranked_trials(study)] == [3, 0, 1, 2]
    study.set_user_attr(f"{ATTR}3", {"values": [0.95, 0.70], "score": 0.825, "seconds": 1.0})
    study.set_user_attr(f"{ATTR}0", {"values": [0.90, 0.86], "score": 0.88, "seconds": 1.0})
    study.set_user_attr(f"{ATTR}1", {"claimed": True})  # taken by a worker, not finished: not confirmed
    assert [t.number for t in ranked_trials(study)] == [0, 3, 1, 2]
    assert set(confirmations(study)) == {0, 3}


def test_confirm_through_the_cli_chooses_by_the_fold_score(make_space, hpsearch, tmp_path: Path) -> None:
    space = make_space(fixed__epochs=1, study__pruner="none", study__confirm={"top_k": 2, "folds": 2})
    res = hpsearch("run", "--space", str(space), "--trials", "4", "--keep-best", "1", check=True)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    by_value = sorted(study.trials, key=lambda t: t.value, reverse=True)
    done = confirmations(study)
    assert set(done) == {t.number for t in by_value[:2]}
    for number, record in done.items():
        assert record["values"][0] == study.trials[number].value and len(record["values"]) == 3
        assert record["score"] == pytest.approx(sum(record["values"]) / 3)
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
    from .conftest import space_dict
    from hpsearch.validation import validate

    assert validate(space_dict(tiny_model, tiny_data)).study["confirm"] is None
    assert validate(space_dict(tiny_model, tiny_data, study__confirm=True)).study["confirm"] == {"top_k": 3, "folds": 2}
    assert validate(space_dict(tiny_model, tiny_data, study__confirm={"folds": 1})).study["confirm"] == {
        "top_k": 3, "folds": 1}
    assert validate(space_dict(tiny_model, tiny_data, study__confirm=False)).study["confirm"] is None

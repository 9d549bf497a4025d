"""Encoded data: cross-validation folds of both splits, and splits joined with their padding and lengths intact."""
from __future__ import annotations

import pytest
import torch

from hpsearch.tasks.encoded import Encoded, PreparedData, concat


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

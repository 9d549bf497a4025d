"""Training only the used embedding rows must give the model that training the whole table gives."""
from __future__ import annotations

import pytest
import torch

from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import state as S
from hpsearch.finetune.vocab import shrink_vocabulary, used_ids
from tests.helpers import CPU
from tests.helpers import trial_hp as _hp


def _train(space, data, hp, shrink: bool, callback: S.Callback | None = None):
    model = M.build_model(space.model, hp, data, CPU)
    result = T.train(model, data, hp, S.TrainSettings(reports_per_epoch=2, shrink_vocab=shrink), device=CPU,
                     callback=callback)
    return model, result


def test_small_table_training_equals_full_table_training(setup) -> None:
    space, data = setup
    hp = _hp(space, epochs=2, weight_decay=0.1, dropout=0.1)
    full, full_result = _train(space, data, hp, shrink=False)
    small, small_result = _train(space, data, hp, shrink=True)
    assert small.get_input_embeddings().num_embeddings == small.config.vocab_size  # the whole table is back
    assert small_result.metrics == pytest.approx(full_result.metrics, abs=1e-6)
    full_state, small_state = full.state_dict(), small.state_dict()
    assert full_state.keys() == small_state.keys()
    for name, value in full_state.items():
        torch.testing.assert_close(small_state[name], value, atol=2e-6, rtol=1e-5, msg=name)


def test_unused_rows_get_exactly_the_weight_decay(setup) -> None:
    space, data = setup
    hp = _hp(space, epochs=1, weight_decay=0.5, learning_rate=3e-3)
    pretrained = M.build_model(space.model, hp, data, CPU).get_input_embeddings().weight.detach()
    model, _ = _train(space, data, hp, shrink=True)
    unused = torch.ones(len(pretrained), dtype=torch.bool)
    unused[used_ids(data)] = False
    assert unused.sum() >= 8  # [UNK], [MASK], [unused*]
    ratio = model.get_input_embeddings().weight.detach()[unused] / pretrained[unused]
    assert float(ratio.max()) < 0.9999  # decayed, not left as they were
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])))  # all by the same factor


def test_the_whole_table_comes_back_when_training_stops_early(setup) -> None:
    space, data = setup

    class Stop(S.Callback):
        def on_evaluate(self, state, metrics) -> None:
            raise RuntimeError("pruned")

    hp = _hp(space, epochs=1)
    model = M.build_model(space.model, hp, data, CPU)
    with pytest.raises(RuntimeError, match="pruned"):
        T.train(model, data, hp, S.TrainSettings(reports_per_epoch=2), device=CPU, callback=Stop())
    assert model.get_input_embeddings().num_embeddings == model.config.vocab_size


def test_frozen_or_tied_embeddings_are_left_alone(setup) -> None:
    space, data = setup
    frozen = M.build_model(space.model, _hp(space, num_frozen_layers=1), data, CPU)
    assert shrink_vocabulary(frozen, data) is None
    model = M.build_model(space.model, _hp(space), data, CPU)
    model.get_output_embeddings = lambda: model.get_input_embeddings()  # as a language-model head would
    assert shrink_vocabulary(model, data) is None


def test_renumbered_data_looks_up_the_same_vectors(setup) -> None:
    space, data = setup
    model = M.build_model(space.model, _hp(space), data, CPU)
    before = model.get_input_embeddings().weight.detach().clone()
    small = shrink_vocabulary(model, data)
    assert small is not None and small.small.num_embeddings < len(before)
    looked_up = small.small.weight.detach()[small.data.train.input_ids]
    torch.testing.assert_close(looked_up, before[data.train.input_ids], rtol=0, atol=0)
    assert small.small.padding_idx == int((small.ids == model.config.pad_token_id).nonzero())


def test_special_ids_keep_their_numbers_so_roberta_positions_stay_right() -> None:
    """RoBERTa derives position ids from ``input_ids != padding_idx`` (pad id 1): renumbering must keep 0..2."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from hpsearch.tasks.encoded import Encoded, PreparedData

    config = RobertaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, num_labels=2)
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(50, 120, (8, 12), generator=gen)
    lengths = torch.tensor([12, 10, 7, 12, 5, 9, 12, 3])
    for row, n in enumerate(lengths.tolist()):
        ids[row, n - 1] = 2
        ids[row, n:] = 1
    enc = Encoded(ids, lengths, torch.zeros(8, dtype=torch.long))
    data = PreparedData(enc, enc, "classification", ["a", "b"])
    with torch.no_grad():
        before = model(**enc.batch(torch.arange(8), CPU)).logits
    small = shrink_vocabulary(model, data)
    assert small is not None and small.small.num_embeddings < 200
    assert small.ids[:3].tolist() == [0, 1, 2] and small.small.padding_idx == 1
    assert 1 not in small.data.train.input_ids[enc.input_ids != 1].tolist()  # no other token became "padding"
    with torch.no_grad():
        after = model(**small.data.train.batch(torch.arange(8), CPU)).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_special_ids_high_in_the_vocabulary_leave_the_table_alone(setup) -> None:
    space, data = setup
    model = M.build_model(space.model, _hp(space), data, CPU)
    model.config.eos_token_id = model.config.vocab_size - 1  # as GPT-2's 50256 of 50257
    assert shrink_vocabulary(model, data) is None

"""The training loop's correctness guards, on the tiny model: it learns, freezes, seeds, schedules."""
from __future__ import annotations

import pytest
import torch

from hpsearch.config.vocabulary import Hyperparameters
from hpsearch.errors import HpsearchError
from hpsearch.finetune import batching as B
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import optim as O
from hpsearch.finetune import state as S
from hpsearch.tasks.classification import SequenceClassification
from tests.helpers import CPU
from tests.helpers import trial_hp as _hp


def _run(space, data, **kw):
    hp = _hp(space, **kw)
    model = M.build_model(space.model, hp, data, CPU)
    return model, T.train(model, data, hp, S.TrainSettings(reports_per_epoch=2), device=CPU)


def test_the_model_learns(setup) -> None:
    space, data = setup
    _, result = _run(space, data, epochs=4)
    assert result.history[0]["eval_loss"] > result.history[-1]["eval_loss"]
    assert result.metrics["accuracy"] >= 0.8, result.history


def test_reports_are_numbered_by_epoch_fraction(setup) -> None:
    space, data = setup
    _, a = _run(space, data, epochs=2, batch_size=16)
    _, b = _run(space, data, epochs=1, batch_size=64)
    assert [h["report"] for h in a.history] == [1, 2, 3, 4]
    assert [h["report"] for h in b.history] == [1, 2]
    # report k fires at the first step with at least k/2 epochs seen, so within one batch of k/2 epochs
    for result, batch in ((a, 16), (b, 64)):
        for h in result.history:
            assert h["report"] / 2 <= h["epoch"] < h["report"] / 2 + batch / len(data.train)


def test_frozen_parameters_do_not_change_and_trainable_ones_do(setup) -> None:
    space, data = setup
    hp = _hp(space, num_frozen_layers=1, epochs=1)
    model = M.build_model(space.model, hp, data, CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1), device=CPU)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        frozen = name.startswith(("bert.embeddings", "bert.encoder.layer.0."))
        assert p.requires_grad is not frozen, name
        assert changed is not frozen, name


def test_too_many_frozen_layers_is_refused(setup) -> None:
    space, data = setup
    with pytest.raises(HpsearchError, match="exceeds"):
        M.build_model(space.model, _hp(space, num_frozen_layers=3), data, CPU)


def test_dropout_reaches_the_model(setup) -> None:
    space, data = setup
    model = M.build_model(space.model, _hp(space, dropout=0.27), data, CPU)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.27}
    assert model.config.hidden_dropout_prob == 0.27 and model.config.attention_probs_dropout_prob == 0.27


def _lr_curve(name: str, warmup: float = 0.0, total: int = 20) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = O.make_scheduler(opt, Hyperparameters(scheduler=name, warmup_ratio=warmup), total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_scheduler_curves_have_the_right_shape() -> None:
    linear = _lr_curve("linear", warmup=0.2)
    assert linear[0] == 0.0 and max(linear) == pytest.approx(1.0) and linear.index(max(linear)) == 4
    assert all(a >= b for a, b in zip(linear[4:], linear[5:])) and linear[-1] < 0.1
    assert _lr_curve("constant") == [1.0] * 20
    cosine = _lr_curve("cosine")
    assert cosine[10] == pytest.approx(0.5, abs=0.05) and cosine[-1] < 0.01
    assert _lr_curve("constant_with_warmup", warmup=0.5)[10:] == [1.0] * 10


@pytest.mark.parametrize("name, tail", [
    ("cosine_with_restarts", 0.0),       # one cycle: half a cosine down to 0
    ("polynomial", 0.0),                 # power 1 down to lr_end (1e-7)
    ("inverse_sqrt", (2 / 20) ** 0.5),   # lr * sqrt(warmup / step)
    ("cosine_with_min_lr", 0.1),         # down to min_lr_rate (hpsearch's default 0.1) of the peak
    ("cosine_warmup_with_min_lr", 0.1),
    ("warmup_stable_decay", 0.0),        # flat at the peak, then the last tenth of the steps down to 0
])
def test_every_listed_scheduler_warms_up_peaks_and_ends_where_its_shape_says(name: str, tail: float) -> None:
    lrs = _lr_curve(name, warmup=0.1)  # 20 steps: 2 of warmup
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) <= 2
    assert lrs[0] < 1.0  # warming up
    after = lrs[lrs.index(max(lrs)):]
    assert all(a >= b - 1e-9 for a, b in zip(after, after[1:]))  # never rises again after the peak
    end = 2 * after[-1] - after[-2]  # where the schedule lands after the last step
    assert end == pytest.approx(tail, abs=0.05), lrs
    if name == "warmup_stable_decay":
        assert after[:-1] == [pytest.approx(1.0)] * (len(after) - 1)  # stable until the decay


def test_a_trial_does_not_depend_on_earlier_trials(setup) -> None:
    space, data = setup
    _, alone = _run(space, data, learning_rate=1e-3, dropout=0.1, epochs=1)
    _run(space, data, learning_rate=3e-3, dropout=0.2, epochs=1, seed=5)  # a different trial in between
    _, again = _run(space, data, learning_rate=1e-3, dropout=0.1, epochs=1)
    assert again.history == alone.history


def test_length_grouped_batches_cover_every_example_once_and_reshuffle() -> None:
    lengths = torch.randint(3, 60, (1000,))
    g = torch.Generator().manual_seed(0)
    e1 = B.length_grouped_batches(lengths, 16, g, group=4)
    e2 = B.length_grouped_batches(lengths, 16, g, group=4)
    for epoch in (e1, e2):
        assert sorted(torch.cat(epoch).tolist()) == list(range(1000))
    assert [b.tolist() for b in e1] != [b.tolist() for b in e2]
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in e1) / len(e1)
    random_spread = sum(int(lengths[b].max() - lengths[b].min()) for b in torch.randperm(1000).split(16)) / 63
    assert spread < random_spread / 2  # grouped batches pad far less than random ones


def test_non_finite_loss_stops_training(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    space, data = setup
    monkeypatch.setattr(SequenceClassification, "loss", lambda self, logits, labels: logits.sum() * float("nan"))
    with pytest.raises(S.NonFiniteLoss, match="step 1"):
        _run(space, data, epochs=1)


class _Replay:
    """A CUDA graph stand-in on the CPU: a replay runs the captured step again and writes its loss where the graph
    would (what the step is, its static inputs and its bookkeeping are StepGraphs' own)."""

    def __init__(self, step) -> None:
        self.step, self.loss, self.replays = step, torch.zeros(()), 0

    def replay(self) -> None:
        self.replays += 1
        self.loss.copy_(self.step())


def test_the_graphed_step_trains_exactly_as_the_eager_one(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.cuda_graphs on the CPU runs the same step uncaptured; with capture (a stand-in that replays on the
    CPU) each shape is run once eagerly, then captured and replayed from static copies of the batch: the losses
    and the final weights equal the eager step's."""
    from hpsearch.finetune import graphs as G

    space, data = setup
    hp = _hp(space, epochs=2, batch_size=8, dropout=0.0)

    def train(cuda_graphs: bool) -> tuple[S.TrainResult, torch.nn.Module]:
        model = M.build_model(space.model, hp, data, CPU)
        settings = S.TrainSettings(reports_per_epoch=2, cuda_graphs=cuda_graphs)
        return T.train(model, data, hp, settings, device=CPU), model

    eager, eager_model = train(False)
    uncaptured, _ = train(True)
    assert uncaptured.metrics == eager.metrics
    recorded: list[_Replay] = []

    def record(self, step):
        recorded.append(_Replay(step))
        return recorded[-1], recorded[-1].loss

    monkeypatch.setattr(G.StepGraphs, "record", record)
    real_start = T._start

    def start(*args, **kwargs):  # capture on, as on a CUDA device
        run = real_start(*args, **kwargs)
        run.graphs.capture = True
        return run

    monkeypatch.setattr(T, "_start", start)
    replayed, replayed_model = train(True)
    assert recorded and sum(r.replays for r in recorded) > len(recorded)  # shapes captured once, replayed after
    assert [h["eval_loss"] for h in replayed.history] == pytest.approx([h["eval_loss"] for h in eager.history],
                                                                       abs=1e-6)
    for (name, a), (_, b) in zip(eager_model.named_parameters(), replayed_model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name

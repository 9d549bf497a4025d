"""Durable trials, the training side (:mod:`hpsearch.finetune.durable`): a run saved at any step boundary and
continued from there ends exactly as the run that was never stopped (fp32 on the CPU: the same reports, metrics and
weights to 1e-6), whatever the stop: mid-epoch, at a report, during an evaluation, with early stopping and the best
checkpoint kept, dropout on, micro-batches, a micro-batch halved by out of memory; a LoRA checkpoint holds the
adapters and the head, never the base."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpsearch import interrupts
from hpsearch.finetune import durable as D
from hpsearch.finetune import loop as L
from hpsearch.finetune.precision import FP32
from hpsearch.finetune.recipe import Prepared, fine_tune
from hpsearch.finetune.state import Callback
from tests.helpers import CPU, trial_hp


class _Files:
    """A durability that keeps every checkpoint (by step) in a folder, as a store that never removes any."""

    def __init__(self, folder: Path, every_s: float = 1e-9) -> None:
        self.folder, self.every_s, self.saved = folder, every_s, {}

    def save(self, write, summary) -> None:
        path = self.folder / f"{summary['step']}.safetensors"
        write(path)
        self.saved[summary["step"]] = path

    def durability(self, resume: Path | None = None) -> D.Durability:
        return D.Durability(save=self.save, every_s=self.every_s, resume=resume)


def _same(a, b) -> None:
    (model_a, result_a), (model_b, result_b) = a, b
    assert len(result_a.history) == len(result_b.history)
    for ha, hb in zip(result_a.history, result_b.history):
        assert ha == pytest.approx(hb, rel=1e-6, abs=1e-6), (ha, hb)
    assert result_a.metrics == pytest.approx(result_b.metrics, rel=1e-6, abs=1e-6)
    assert result_a.steps == result_b.steps and result_a.selection == result_b.selection
    b = dict(model_b.named_parameters())
    for name, p in model_a.named_parameters():
        torch.testing.assert_close(p, b[name], rtol=1e-6, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture
def space_and_data(setup):
    """The tiny space with early stopping, the best checkpoint kept and a full evaluation every half epoch."""
    from hpsearch.config.validation import validate

    space, data = setup
    raw = space.to_dict()
    raw["study"].update(trial_value="best", early_stopping={"patience": 3})
    return validate(raw), data


@pytest.mark.parametrize("hp_kw", [dict(dropout=0.1, epochs=3),
                                   dict(dropout=0.2, epochs=2, micro_batch_size=4, scheduler="cosine",
                                        warmup_ratio=0.1)],
                         ids=["dropout", "micro-batches"])
def test_a_run_continued_from_any_step_ends_exactly_as_the_run_never_stopped(space_and_data, tmp_path: Path,
                                                                             hp_kw: dict) -> None:
    """Saved at every step (as a worker killed at any moment leaves its last checkpoint), continued from steps
    mid-epoch, at an epoch's end and at a report: the same history, result and weights as uninterrupted."""
    space, data = space_and_data
    prepared = Prepared(CPU, data, FP32)
    hp = trial_hp(space, batch_size=16, **hp_kw)
    files = _Files(tmp_path)
    whole = fine_tune(space, hp, prepared, durability=files.durability())
    steps = sorted(files.saved)
    assert len(steps) >= whole[1].steps - 1  # every step but the last (the trial ends there)
    reference = fine_tune(space, hp, prepared)  # no durability at all: saving changes nothing
    _same(reference, whole)
    per_epoch = whole[1].steps // hp.epochs
    for step in {3, per_epoch, per_epoch + per_epoch // 2, steps[-1]}:
        resumed = D.Durability(save=lambda write, summary: None, every_s=1e9, resume=files.saved[step])
        again = fine_tune(space, hp, prepared, durability=resumed)
        assert resumed.resumed["step"] == step
        _same(reference, again)


def test_a_signal_saves_at_the_next_step_and_a_signal_during_an_evaluation_saves_before_it(
        space_and_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM / Ctrl-C (held until a step boundary) save the run there before it stops; one that stops an
    evaluation saves the run as it stood before the evaluation, which the continued run takes again."""
    space, data = space_and_data
    prepared = Prepared(CPU, data, FP32)
    hp = trial_hp(space, batch_size=16, epochs=2, dropout=0.1)
    reference = fine_tune(space, hp, prepared)

    class SignalAt(Callback):
        def on_step(self, state) -> None:
            if state.step == 7:
                interrupts.stop_all("a signal")  # held, as the handler holds SIGTERM

    files = _Files(tmp_path, every_s=1e9)  # no time-based saves: only the report's and the signal's
    try:
        with pytest.raises(KeyboardInterrupt):
            fine_tune(space, hp, prepared, callback=SignalAt(), durability=files.durability())
    finally:
        interrupts.clear()
    assert max(files.saved) == 8  # the step after the signal
    _same(reference, fine_tune(space, hp, prepared, durability=files.durability(files.saved[8])))

    real, calls = L.evaluate, []

    def evaluate(*args, **kwargs):  # the third evaluation is stopped by a signal
        calls.append(1)
        if len(calls) == 3:
            interrupts.stop_all("a signal")
            interrupts.check()
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "evaluate", evaluate)
    files = _Files(tmp_path / "eval", every_s=1e9)
    (tmp_path / "eval").mkdir()
    try:
        with pytest.raises(KeyboardInterrupt):
            fine_tune(space, hp, prepared, durability=files.durability())
    finally:
        interrupts.clear()
    monkeypatch.setattr(L, "evaluate", real)
    last = files.saved[max(files.saved)]
    tensors, meta = D.read(last)
    assert meta["state"]["report"] == 2 and meta["position"]["next_report"] == 1  # the report to take again
    _same(reference, fine_tune(space, hp, prepared, durability=files.durability(last)))


def test_a_micro_batch_halved_by_out_of_memory_stays_halved(space_and_data, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    space, data = space_and_data
    prepared = Prepared(CPU, data, FP32)
    hp = trial_hp(space, batch_size=16, epochs=1)
    real, failed = L._accumulate, []

    def once_out_of_memory(run, batch):
        if run.state.step == 2 and not failed:
            failed.append(1)
            raise torch.cuda.OutOfMemoryError("out of memory")
        return real(run, batch)

    monkeypatch.setattr(L, "_accumulate", once_out_of_memory)
    files = _Files(tmp_path)
    whole = fine_tune(space, hp, prepared, durability=files.durability())
    assert whole[1].metrics and D.read(files.saved[5])[1]["micro"] == 8
    again = fine_tune(space, hp, prepared, durability=D.Durability(lambda w, s: None, 1e9, files.saved[5]))
    _same(whole, again)


def test_a_lora_checkpoint_holds_adapters_and_head_only(setup, tmp_path: Path) -> None:
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    hp = trial_hp(space, lora_r=4, epochs=1, dropout=0.1)
    files = _Files(tmp_path, every_s=1e9)
    model, _ = fine_tune(space, hp, prepared, durability=files.durability())
    tensors, meta = D.read(files.saved[min(files.saved)])
    weights = {k[len("model/"):] for k in tensors if k.startswith("model/")}
    assert weights and all("lora_" in k or "modules_to_save" in k for k in weights), sorted(weights)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert weights == trained  # what trains, nothing of the frozen base


def test_a_checkpoint_of_another_config_is_not_continued_from(setup, tmp_path: Path) -> None:
    """The same trial's checkpoint only: another learning rate (a changed space) starts from step 0, saying why."""
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    files = _Files(tmp_path, every_s=1e9)
    fine_tune(space, trial_hp(space, epochs=1), prepared, durability=files.durability())
    other = trial_hp(space, epochs=1, learning_rate=1e-3)
    refused = D.Durability(lambda w, s: None, 1e9, files.saved[min(files.saved)])
    _same(fine_tune(space, other, prepared), fine_tune(space, other, prepared, durability=refused))
    assert "other hyperparameters (learning_rate)" in refused.resumed["refused"]
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(files.saved[min(files.saved)].read_bytes()[:100])
    refused = D.Durability(lambda w, s: None, 1e9, torn)
    fine_tune(space, other, prepared, durability=refused)
    assert refused.resumed["refused"].startswith("the checkpoint cannot be read")


def test_a_fork_continues_another_trial_s_checkpoint_with_its_own_learning_rate_and_decay(setup,
                                                                                         tmp_path: Path) -> None:
    """The ground of population-based training: a checkpoint continued with the learning rate, weight decay and
    dropout changed; the schedule goes on from its step at the new rate. Anything else changed is refused."""
    from hpsearch.finetune.model import build_model
    from hpsearch.finetune.state import TrainSettings

    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    source = trial_hp(space, epochs=2, learning_rate=2e-3, weight_decay=0.01, dropout=0.0, scheduler="linear")
    files = _Files(tmp_path, every_s=1e9)
    fine_tune(space, source, prepared, durability=files.durability())
    saved = files.saved[min(files.saved)]
    forked = source.replace(learning_rate=5e-4, weight_decay=0.1, dropout=0.2)
    started = {}
    real_epoch = L._epoch

    def first_epoch(run, epoch):
        started.setdefault("lr", [g["lr"] for g in run.optimizer.param_groups])
        started.setdefault("wd", [g["weight_decay"] for g in run.optimizer.param_groups])
        started.setdefault("step", run.state.step)
        return real_epoch(run, epoch)

    L._epoch = first_epoch
    try:
        durability = D.Durability(lambda w, s: None, 1e9, saved, fork=True)
        model = build_model(space.model, forked, data, CPU)
        L.train(model, data, forked, TrainSettings.from_space(space), device=CPU, durability=durability)
    finally:
        L._epoch = real_epoch
    total = 2 * 12
    assert started["step"] == durability.resumed["step"] == 6
    assert started["lr"] == pytest.approx([5e-4 * (total - 6) / total] * 2)  # linear decay, at step 6 of 24
    assert started["wd"] == [0.1, 0.0]
    with pytest.raises(D.CannotResume, match="batch_size"):
        run_hp = forked.replace(batch_size=8)
        model = build_model(space.model, run_hp, data, CPU)
        strict = D.Durability(lambda w, s: None, 1e9, saved, fork=True)
        L.train(model, data, run_hp, TrainSettings.from_space(space), device=CPU, durability=strict)
        raise D.CannotResume(strict.resumed.get("refused", ""))

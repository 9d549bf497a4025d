"""Fused trials (:mod:`hpsearch.finetune.fused`): members trained in one pass train as they would alone, join and
leave at any step, fail alone, and LoRA members hold one base between them."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from hpsearch.config.validation import validate
from hpsearch.finetune import fused as FU
from hpsearch.finetune.data import prepare
from hpsearch.finetune.model import load_tokenizer
from hpsearch.finetune.precision import FP32
from hpsearch.finetune.recipe import Prepared, fine_tune, fuser_for
from hpsearch.finetune.state import Callback
from tests.helpers import CPU, write_jsonl_splits
from tests.helpers import trial_hp as _hp

TOL = dict(rtol=1e-4, atol=1e-5)
"""What rounding leaves between a member and the same trial alone in fp32 (products batched differently); with
dropout 0, as a member's dropout masks are its passes'."""


def _fused(space, prepared, hps, callbacks=None, start=None, size=None):
    """Train ``hps`` as members of one fused group, a thread each (``start[i]``: an event member i waits for);
    return each one's (model, result) or the exception it raised, and the fuser."""
    fuser = fuser_for(space, prepared, size or len(hps))
    out: list = [None] * len(hps)

    def member(i: int) -> None:
        if start is not None and start[i] is not None:
            start[i].wait(60)
        try:
            out[i] = fine_tune(space, hps[i], prepared, callback=(callbacks or {}).get(i), fuser=fuser)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(hps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out, fuser


def _same(alone, fused) -> None:
    """The same reports, the same evaluations and the same final weights, to :data:`TOL`."""
    (model_a, result_a), (model_f, result_f) = alone, fused
    assert [h["report"] for h in result_a.history] == [h["report"] for h in result_f.history]
    for ha, hf in zip(result_a.history, result_f.history):
        assert ha["eval_loss"] == pytest.approx(hf["eval_loss"], rel=1e-4, abs=1e-5), (ha, hf)
    a = dict(model_a.named_parameters())
    for name, p in model_f.named_parameters():
        torch.testing.assert_close(p, a[name], **TOL, msg=name)


def _members(space, lora: int) -> list:
    """Three trials that differ in everything a member may have of its own."""
    return [_hp(space, lora_r=lora, learning_rate=2e-3, batch_size=16, epochs=2),
            _hp(space, lora_r=lora * 2, learning_rate=5e-4, batch_size=8, epochs=1, scheduler="cosine",
                warmup_ratio=0.2, weight_decay=0.1, seed=3, lora_alpha=8, max_grad_norm=0.5),
            _hp(space, lora_r=lora, learning_rate=1e-3, batch_size=32, epochs=3, micro_batch_size=8, seed=5,
                num_frozen_layers=1)]


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_fused_classifiers_train_as_they_would_alone(setup, lora: int) -> None:
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    hps = _members(space, lora)
    alone = [fine_tune(space, hp, prepared) for hp in hps]
    fused, fuser = _fused(space, prepared, hps)
    for a, f in zip(alone, fused):
        _same(a, f)
    assert fuser.member_passes > fuser.passes  # passes did hold several members


@pytest.fixture
def sft(tmp_path: Path, tiny_decoders):
    """A causal-LM space on the tiny Llama (prompts masked out of the loss) and its data."""
    from tests.tasks.test_tasks import sft_rows, sft_space

    files = write_jsonl_splits(tmp_path, "sft", sft_rows, {"train": 48, "dev": 16})
    space = validate(sft_space(tiny_decoders["llama"], files["train"], files["dev"], prompt_column="instruction",
                               response_column="answer"))
    return space, prepare(space.data, load_tokenizer(space.model), 32)


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_fused_causal_lms_train_as_they_would_alone(sft, lora: int) -> None:
    space, data = sft
    prepared = Prepared(CPU, data, FP32)
    hps = [_hp(space, lora_r=lora, batch_size=8, epochs=1, learning_rate=3e-3),
           _hp(space, lora_r=lora * 2, batch_size=16, epochs=2, learning_rate=1e-3, seed=7, scheduler="constant")]
    alone = [fine_tune(space, hp, prepared) for hp in hps]
    fused, _ = _fused(space, prepared, hps)
    for a, f in zip(alone, fused):
        _same(a, f)


class _AtStep(Callback):
    """Sets ``event`` once training reaches ``step``; raises ``error`` at report ``stop_at`` (a pruner's stop)."""

    def __init__(self, step: int = 0, stop_at: int | None = None, error: type[BaseException] = RuntimeError) -> None:
        self.event, self.step, self.stop_at, self.error = threading.Event(), step, stop_at, error

    def on_step(self, state) -> None:
        if state.step >= self.step:
            self.event.set()

    def on_evaluate(self, state, metrics) -> None:
        if self.stop_at is not None and state.report >= self.stop_at:
            raise self.error(f"stopped at report {state.report}")


def test_a_member_joining_mid_way_trains_as_if_alone(setup) -> None:
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    hps = [_hp(space, batch_size=8, epochs=2), _hp(space, batch_size=16, epochs=1, seed=9, learning_rate=1e-3)]
    alone = [fine_tune(space, hp, prepared) for hp in hps]
    first = _AtStep(step=10)  # the second member joins once the first has taken 10 steps
    fused, _ = _fused(space, prepared, hps, callbacks={0: first}, start=[None, first.event])
    for a, f in zip(alone, fused):
        _same(a, f)


def test_a_member_that_stops_leaves_alone_and_the_others_go_on(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member stopped at a report (as a pruner stops it) or failing with an error stops there, as alone; the
    members left train on to the same end as alone."""
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    hps = [_hp(space, batch_size=16, epochs=2), _hp(space, batch_size=16, epochs=2, seed=4, learning_rate=1e-3),
           _hp(space, batch_size=8, epochs=1, seed=6)]
    alone = fine_tune(space, hps[1], prepared)
    pruned, failing = _AtStep(stop_at=2), _AtStep(stop_at=1, error=ValueError)
    fused, fuser = _fused(space, prepared, hps, callbacks={0: pruned, 2: failing})
    assert isinstance(fused[0], RuntimeError) and "report 2" in str(fused[0])
    assert isinstance(fused[2], ValueError)
    _same(alone, fused[1])
    assert fuser.members == 0  # every member left


class _Micro(Callback):
    def __init__(self) -> None:
        self.micro = 0

    def on_step(self, state) -> None:
        self.micro = state.micro_batch_size


def test_out_of_memory_in_a_pass_halves_each_member_s_micro_batch(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that runs out of memory fails for each of its members, which retry with half the micro-batch (when
    the batch size chose it, as alone) and train on to the same weights: the out-of-memory path is per member."""
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    hps = [_hp(space, batch_size=16, epochs=1), _hp(space, batch_size=8, epochs=1, seed=2)]
    alone = [fine_tune(space, hp, prepared) for hp in hps]
    real, calls = FU.Fuser._pass, {"n": 0}

    def short_of_memory(self, part):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, part)

    monkeypatch.setattr(FU.Fuser, "_pass", short_of_memory)
    seen = [_Micro(), _Micro()]
    fused, _ = _fused(space, prepared, hps, callbacks=dict(enumerate(seen)))
    assert all(not isinstance(f, BaseException) for f in fused), fused
    assert [s.micro for s in seen] == [8, 4]  # the pass held both members: each halved its own
    for a, f in zip(alone, fused):
        _same(a, f)


def test_lora_members_hold_one_base(setup) -> None:
    """K LoRA members and the executor: the tensors they hold grow by each member's adapters and head, not by a
    copy of the base."""
    space, data = setup
    prepared = Prepared(CPU, data, FP32)

    def held(models, leave_out=frozenset()) -> int:
        seen = {}
        for m in models:
            for t in [*m.parameters(), *m.buffers()]:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(n for ptr, n in seen.items() if ptr not in leave_out)

    sizes = {}
    for k in (1, 4):
        hps = [_hp(space, lora_r=4, batch_size=16, epochs=1, seed=i) for i in range(k)]
        fused, fuser = _fused(space, prepared, hps)
        sizes[k] = held([m for m, _ in fused] + [fuser._executor])
    base = {t.untyped_storage().data_ptr() for t in fuser.base.values()}
    own = held([fused[0][0]], leave_out=base)  # a member's adapters, head and buffers
    trained = sum(p.numel() * p.element_size() for p in fused[0][0].parameters() if p.requires_grad)
    assert trained <= own < trained + 2048  # what a member holds of its own is what it trains, give or take buffers
    assert sizes[4] - sizes[1] == pytest.approx(3 * own, rel=0.01), (sizes, own)
    assert own < 0.25 * held([fused[0][0]]) and sizes[4] < 2 * sizes[1]  # the base is held once


def test_a_member_s_kept_copy_shares_nothing_with_the_group(setup) -> None:
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    (member,), fuser = _fused(space, prepared, [_hp(space, lora_r=4, epochs=1)])
    model = member[0]
    copy = FU.private(model)
    base = {t.untyped_storage().data_ptr() for t in fuser.base.values()}
    assert not base & {p.untyped_storage().data_ptr() for p in copy.parameters()}
    assert base & {p.untyped_storage().data_ptr() for p in model.parameters()}  # the member itself shares it

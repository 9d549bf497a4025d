"""Fused trials (:mod:`hpsearch.finetune.fused`): members trained in one pass train as they would alone, join and
leave at any step, fail alone, and LoRA members hold one base between them."""
from __future__ import annotations

import threading
import time
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

KEY_BIASES = (".key.bias", ".k_proj.bias")
"""Attention's key bias shifts every score of a query alike (a softmax over keys ignores it): its gradient is zero
but for rounding, which AdamW scales up to steps of the learning rate in either direction; it is not compared."""
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


def _same(alone, fused, weights: bool = True) -> None:
    """The same reports, the same evaluations and (``weights``) the same final weights, to :data:`TOL`."""
    (model_a, result_a), (model_f, result_f) = alone, fused
    assert [h["report"] for h in result_a.history] == [h["report"] for h in result_f.history]
    for ha, hf in zip(result_a.history, result_f.history):
        assert ha["eval_loss"] == pytest.approx(hf["eval_loss"], rel=1e-4, abs=1e-5), (ha, hf)
        # A rank correlation (regression's spearman) jumps when rounding swaps two predictions' order.
        assert ha == pytest.approx(hf, rel=1e-2, abs=1e-5), (ha, hf)
    if not weights:
        return
    a = dict(model_a.named_parameters())
    for name, p in model_f.named_parameters():
        if name.endswith(KEY_BIASES):
            continue
        torch.testing.assert_close(p, a[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")


def _members(space, lora: int) -> list:
    """Three trials that differ in everything a member may have of its own."""
    return [_hp(space, lora_r=lora, learning_rate=2e-3, batch_size=16, epochs=2),
            _hp(space, lora_r=lora * 2, learning_rate=5e-4, batch_size=8, epochs=1, scheduler="cosine",
                warmup_ratio=0.2, weight_decay=0.1, seed=3, lora_alpha=8, max_grad_norm=0.5),
            _hp(space, lora_r=lora, learning_rate=1e-3, batch_size=32, epochs=3, micro_batch_size=8, seed=5,
                num_frozen_layers=1)]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-member"])
@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_fused_classifiers_train_as_they_would_alone(setup, lora: int, batched: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Members' own weights in batched products (a launch-bound pass) or each member's rows through its own
    weights (an arithmetic-bound one): either way each member trains as alone."""
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    monkeypatch.setattr(FU.PassCost, "launch_bound", lambda self, tokens: batched)
    hps = _members(space, lora)
    alone = [fine_tune(space, hp, prepared) for hp in hps]
    fused, fuser = _fused(space, prepared, hps)
    for a, f in zip(alone, fused):
        _same(a, f)
    assert fuser.member_passes > fuser.passes  # passes did hold several members


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


def test_members_with_other_dropouts_share_passes_and_a_dropout_free_one_trains_as_alone(setup) -> None:
    """Hidden dropout is per member inside a pass: members with dropout 0, 0.1 and 0.3 run in the same passes (a
    searched dropout does not split them), and the member without dropout trains exactly as it would alone."""
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    hps = [_hp(space, batch_size=16, epochs=1, dropout=0.0),
           _hp(space, batch_size=16, epochs=1, dropout=0.1, seed=2),
           _hp(space, batch_size=16, epochs=1, dropout=0.3, seed=3)]
    alone = fine_tune(space, hps[0], prepared)
    fused, fuser = _fused(space, prepared, hps)
    assert fuser.per_member_dropout
    # Split by dropout, every pass would hold one member (36 passes). Members join as their threads start and leave
    # the others to evaluate, so when the machine is busy some passes hold fewer than three (12-16 seen).
    assert fuser.member_passes == 36 and fuser.passes <= 24
    _same(alone, fused[0])
    for (model, _), hp in zip(fused[1:], hps[1:]):  # the others did train, and differently from the first
        assert not torch.allclose(next(model.parameters()), next(fused[0][0].parameters()))


def test_member_keep_mask_drops_each_member_s_rows_with_its_own_probability() -> None:
    from hpsearch.finetune.fused_dropout import member_keep_mask

    torch.manual_seed(0)
    mask = member_keep_mask(torch.Size([3 * 64, 32, 16]), [0.0, 0.25, 1.0], torch.float32, torch.device("cpu"))
    first, second, third = mask.split(64)
    assert torch.equal(first, torch.ones_like(first)) and torch.equal(third, torch.zeros_like(third))
    assert second.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert (second == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_split_attention_runs_each_member_s_rows_with_its_dropout(setup) -> None:
    """The attention of a pass with two dropouts: the dropout-free member's rows are attention without dropout,
    the other's are not."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from hpsearch.finetune import fused_dropout as FD
    from hpsearch.finetune.members import PassState

    state = PassState()
    state.begin([None, None], rows=2, dropouts=[0.0, 0.5])
    module = torch.nn.Module()
    module.__dict__[FD.PASS_ATTR] = state
    module.is_causal = False
    split = ALL_ATTENTION_FUNCTIONS[FD._register("sdpa")]
    q, k, v = (torch.randn(4, 2, 5, 8) for _ in range(3))
    out, _ = split(module, q, k, v, None, dropout=FD.SENTINEL_DROPOUT)
    plain, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, None, dropout=0.0)
    torch.testing.assert_close(out[:2], plain[:2])
    assert not torch.allclose(out[2:], plain[2:])


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


@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "bf16-weights-mixed"])
def test_lora_members_hold_one_base(setup, mixed: bool) -> None:
    """K LoRA members and the executor: the tensors they hold grow by each member's adapters and head, not by a
    copy of the base; also under mixed precision over bf16 weights, where fp32 master copies are made of what
    trains (the executor trains nothing)."""
    from hpsearch.finetune.precision import precision_plan

    space, data = setup
    prepared = Prepared(CPU, data, precision_plan("bf16", "bfloat16", None, CPU) if mixed else FP32)

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
        sizes[k] = held([m for m, _ in fused] + [fuser.executor.module])
    base = {t.untyped_storage().data_ptr() for t in fuser.base.values()}
    own = held([fused[0][0]], leave_out=base)  # a member's adapters, head and buffers
    trained = sum(p.numel() * p.element_size() for p in fused[0][0].parameters() if p.requires_grad)
    vectors = sum(p.numel() * p.element_size() for p in fused[0][0].parameters()  # mixed: fp32 norms and biases
                  if not p.requires_grad and p.ndim < 2 and p.untyped_storage().data_ptr() not in base)
    # What a member holds of its own is what it trains (and, mixed, its frozen vectors), give or take buffers.
    assert trained + vectors <= own < trained + vectors + 2048
    assert sizes[4] - sizes[1] == pytest.approx(3 * own, rel=0.01), (sizes, own)
    assert own < (0.4 if mixed else 0.25) * held([fused[0][0]]) and sizes[4] < 2 * sizes[1]  # the base, once
    executor = fuser.executor.module  # it trains nothing: no master copy of the base (its head and vectors only)
    assert held([executor], leave_out=base) < 0.25 * held([executor])


def test_a_member_s_kept_copy_shares_nothing_with_the_group(setup) -> None:
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    (member,), fuser = _fused(space, prepared, [_hp(space, lora_r=4, epochs=1)])
    model = member[0]
    copy = FU.private(model)
    base = {t.untyped_storage().data_ptr() for t in fuser.base.values()}
    assert not base & {p.untyped_storage().data_ptr() for p in copy.parameters()}
    assert base & {p.untyped_storage().data_ptr() for p in model.parameters()}  # the member itself shares it


def _request(rows: int, width: int) -> FU._Request:
    return FU._Request(member=None, inputs={"input_ids": torch.zeros(rows, width, dtype=torch.long)},
                       labels=torch.zeros(rows, dtype=torch.long), weight=1.0, scale=None, per_token=False)


def test_passes_are_planned_by_launches_against_padded_arithmetic() -> None:
    """Launch-bound members share one pass whatever their shapes; arithmetic-bound ones share a pass only with
    batches of about their shape (padding a 16 x 20 batch to 32 x 64 would cost more than a pass)."""
    shapes = [(32, 64), (16, 20), (32, 60), (16, 24)]
    requests = [_request(*s) for s in shapes]
    launch_bound = FU.plan_passes(requests, FU.PassCost(fixed_s=5e-3, token_s=1e-9))
    assert [len(p) for p in launch_bound] == [4]
    compute_bound = FU.plan_passes(requests, FU.PassCost(fixed_s=5e-3, token_s=1e-5))
    assert sorted(sorted(FU._shape(r) for r in p) for p in compute_bound) == [[(16, 20), (16, 24)],
                                                                              [(32, 60), (32, 64)]]
    assert FU.plan_passes(requests, FU.PassCost(fixed_s=1e-6, token_s=1e-5)) == [[r] for r in sorted(
        requests, key=FU._shape)]  # launches cost nothing: no padding pays
    assert FU.plan_passes([], FU.PassCost()) == []


def _task_setup(task: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A space of ``task`` on its tiny model, and its data tokenized."""
    from tests.helpers import space_dict

    if task == "regression":
        raw = space_dict(request.getfixturevalue("tiny_model"), request.getfixturevalue("tiny_data"),
                         data__task="regression", study__metric="mse")
    elif task == "token_classification":
        from tests.helpers import tagged_sentences, write_conll
        from tests.tasks.test_tasks import ner_space

        train = write_conll(tmp_path / "train.conll", tagged_sentences(48, 1))
        dev = write_conll(tmp_path / "dev.conll", tagged_sentences(16, 2))
        raw = ner_space(request.getfixturevalue("tiny_tagger"), train, dev)
    elif task == "question_answering":
        from tests.tasks.test_question_answering import qa_rows, qa_space

        raw = qa_space(request.getfixturevalue("tiny_model"),
                       write_jsonl_splits(tmp_path, "qa", qa_rows, {"train": 48, "dev": 16}))
    else:  # seq2seq:t5, seq2seq:bart, causal_lm:gpt2
        task, kind = task.split(":")
        if task == "seq2seq":
            from tests.tasks.test_seq2seq import s2s_rows, s2s_space

            raw = s2s_space(request.getfixturevalue("tiny_seq2seq")[kind],
                            write_jsonl_splits(tmp_path, "s2s", s2s_rows, {"train": 48, "dev": 12}))
        else:
            from tests.tasks.test_tasks import sft_rows, sft_space

            files = write_jsonl_splits(tmp_path, "sft", sft_rows, {"train": 48, "dev": 16})
            raw = sft_space(request.getfixturevalue("tiny_decoders")[kind], files["train"], files["dev"],
                            prompt_column="instruction", response_column="answer")
    space = validate(raw)
    return space, prepare(space.data, load_tokenizer(space.model), space.model.max_length)


@pytest.mark.parametrize("task", ["regression", "token_classification", "question_answering", "seq2seq:t5",
                                  "seq2seq:bart", "causal_lm:gpt2"])
@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_every_task_s_members_train_as_they_would_alone(task: str, lora: int, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    space, data = _task_setup(task, tmp_path, request)
    prepared = Prepared(CPU, data, FP32)
    hps = [_hp(space, lora_r=lora, batch_size=8, epochs=1, learning_rate=3e-3),
           _hp(space, lora_r=lora * 2, batch_size=16, epochs=2, learning_rate=1e-3, seed=7, scheduler="constant")]
    alone = [fine_tune(space, hp, prepared) for hp in hps]
    fused, fuser = _fused(space, prepared, hps)
    for a, f in zip(alone, fused):
        assert not isinstance(f, BaseException), f
        # A span head's scores are shift-invariant (a softmax over positions): its bias, and what feeds it only a
        # shift, get a gradient that is zero but for rounding, which AdamW scales up to steps of the learning rate
        # in either direction. So question answering compares every evaluation, not those weights.
        _same(a, f, weights=task != "question_answering")
    assert fuser.member_passes > fuser.passes


class Boom(Exception):
    """What a failure injected into a pass raises."""


def _both_in_pass(fuser) -> bool:
    return fuser._state.k == 2


@pytest.mark.parametrize("stage", ["plan", "stack", "forward", "loss", "backward", "end"])
def test_a_failure_at_any_stage_of_a_pass_reaches_every_member_with_its_traceback(
        setup, stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever raises while a pass of two members runs (planning, stacking, the forward, a loss, the backward, the
    pass's end) reaches both, each as the original exception type with the traceback of where it was raised; no
    member waits for ever."""
    import traceback

    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    fuser = fuser_for(space, prepared, 2)
    raised = []

    def boom(*args, **kwargs):
        raised.append(stage)
        raise Boom(f"injected at {stage}")

    real_plan, real_stack = FU.plan_passes, FU._stack_inputs
    if stage == "plan":
        monkeypatch.setattr(FU, "plan_passes", lambda requests, cost: boom() if len(requests) == 2 and not raised
                            else real_plan(requests, cost))
    elif stage == "stack":
        monkeypatch.setattr(FU, "_stack_inputs", lambda batches, rows: boom() if len(batches) == 2 and not raised
                            else real_stack(batches, rows))
    elif stage == "end":
        real_end = fuser._state.end
        monkeypatch.setattr(fuser._state, "end", lambda: (real_end(), boom()) if _both_in_pass(fuser) and not raised
                            else real_end())
    else:
        task = fuser.task

        class Backward(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                boom()

        class Injected:
            def __getattr__(self, name):
                return getattr(task, name)

            def forward(self, model, inputs, labels):
                if stage == "forward" and _both_in_pass(fuser) and not raised:
                    boom()
                return task.forward(model, inputs, labels)

            def loss(self, logits, labels):
                loss = task.loss(logits, labels)
                if stage == "loss" and _both_in_pass(fuser) and not raised:
                    boom()
                if stage == "backward" and _both_in_pass(fuser) and not raised:
                    raised.append("armed")
                    return Backward.apply(loss)
                return loss

        fuser.task = Injected()
    hps = [_hp(space, batch_size=16, epochs=3), _hp(space, batch_size=8, epochs=3, seed=2)]
    out = [None, None]

    def member(i: int) -> None:
        try:
            out[i] = fine_tune(space, hps[i], prepared, fuser=fuser)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a member hangs"
    assert all(isinstance(o, Boom) for o in out), out
    assert out[0] is not out[1]  # each its own copy, raised in its own thread
    for o in out:
        assert "boom" in [frame.name for frame in traceback.extract_tb(o.__traceback__)], stage
    assert fuser.members == 0


def _waiting_for_a_silent_member(space, prepared, fuser):
    """Member "trial 7" joins and sends nothing; a second member trains, waiting in its first pass. Returns the
    second member's thread and where its outcome lands."""
    from hpsearch.finetune.model import build_model

    silent = build_model(space.model, _hp(space, seed=7), prepared.data, CPU)
    joined = threading.Event()

    def join_and_stay() -> None:
        fuser.join(silent, 0.0)
        joined.set()

    threading.Thread(target=join_and_stay, name="trial 7").start()
    joined.wait(60)
    out: list = [None]

    def member() -> None:
        try:
            out[0] = fine_tune(space, _hp(space, epochs=1), prepared, fuser=fuser)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[0] = exc

    thread = threading.Thread(target=member)
    thread.start()
    return thread, out


def test_a_member_waiting_for_a_pass_stops_at_an_interrupt(setup) -> None:
    """A waiting member withdraws its request at a held interrupt (Ctrl-C, or a sibling's error that stops the
    worker) and stops with the reason, instead of waiting for a member that may never come."""
    from hpsearch import interrupts

    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    fuser = fuser_for(space, prepared, 2)
    thread, out = _waiting_for_a_silent_member(space, prepared, fuser)
    deadline = time.monotonic() + 60
    while not fuser._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fuser._pending  # it waits for "trial 7"
    interrupts.stop_all("stopped with its fused group: RuntimeError: elsewhere")
    try:
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(out[0], interrupts.GroupStopped) and "elsewhere" in out[0].reason
    finally:
        interrupts.clear()


def test_a_member_that_sends_no_pass_is_named_after_a_bounded_wait(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    monkeypatch.setattr(FU, "STALL_S", 1.0)
    fuser = fuser_for(space, prepared, 2)
    thread, out = _waiting_for_a_silent_member(space, prepared, fuser)
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(out[0], FU.FusedStall) and "trial 7 sent no training pass for 1 s" in str(out[0]), out[0]


def test_a_lora_pass_of_members_with_their_own_alpha_rank_and_dropouts_copies_nothing_to_the_device(setup) -> None:
    """Members with different lora_alpha / lora_r (each its own scaling), lora_dropout and hidden dropout: the
    per-member scalars are made once for the members there are, so a pass creates no tensor from host numbers (a
    host-to-device copy and a sync each on a GPU: 64 a forward for a 7B LoRA on q,v before)."""
    from torch.overrides import TorchFunctionMode

    from hpsearch.finetune.model import build_model

    class Copies(TorchFunctionMode):
        """Tensors made from host numbers (``torch.tensor``), then moved to the device: a copy each on a GPU."""

        def __init__(self) -> None:
            super().__init__()
            self.n, self.host = 0, []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func in (torch.tensor, torch.as_tensor):
                self.n += "device" in kwargs  # made on the device at once
                self.host.append(out)
            elif func is torch.Tensor.to and any(args[0] is h for h in self.host):
                self.n += 1
            return out

    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    fuser = fuser_for(space, prepared, 3)
    hps = [_hp(space, lora_r=4, lora_alpha=8, lora_dropout=0.1, dropout=0.0),
           _hp(space, lora_r=8, lora_alpha=32, lora_dropout=0.2, dropout=0.1, seed=2),
           _hp(space, lora_r=2, lora_alpha=6, lora_dropout=0.0, dropout=0.3, seed=3)]
    models = [build_model(space.model, hp, data, CPU, base=fuser.base) for hp in hps]
    members = [fuser.join(m.train(), hp.dropout) for m, hp in zip(models, hps)]
    assert len({a.scaling for m in members for a in m.view.adapters.values()}) == 3
    rows = torch.arange(16)
    inputs, labels = data.train.batch(rows, CPU), data.train.labels_of(rows, CPU)
    step = lambda: fuser._run([FU._Request(m, inputs, labels, 1.0, None, False) for m in members])  # noqa: E731
    step()  # the first pass of these members makes their constants
    with Copies() as copies:
        for _ in range(3):
            step()
    assert copies.n == 0
    assert fuser.passes == 4 and fuser.member_passes == 12


def test_a_finishing_member_keeps_no_one_waiting(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restoring a kept checkpoint and the final (generation) evaluation happen after a member left: the others'
    passes go on meanwhile."""
    from hpsearch.finetune import loop as L

    space, data = setup
    prepared = Prepared(CPU, data, FP32)
    real_finish, during = L._finish, []
    fuser_of = {}

    def slow_finish(run):
        fuser = fuser_of["fuser"]
        before = fuser.passes
        time.sleep(1.0)  # a long final evaluation
        during.append(fuser.passes - before)
        return real_finish(run)

    monkeypatch.setattr(L, "_finish", slow_finish)
    real_fuser_for = FU.Fuser.__init__

    def remember(self, *args, **kwargs):
        real_fuser_for(self, *args, **kwargs)
        fuser_of["fuser"] = self

    monkeypatch.setattr(FU.Fuser, "__init__", remember)
    hps = [_hp(space, batch_size=16, epochs=1), _hp(space, batch_size=8, epochs=6, seed=2)]
    fused, _ = _fused(space, prepared, hps)
    assert not any(isinstance(f, BaseException) for f in fused), fused
    assert during[0] >= 5, during  # the second member trained on while the first finished (1: one pass in flight)

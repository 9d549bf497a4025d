"""What a GPU would reveal, caught on the CPU (#42): a failed CUDA graph capture puts the thread back on its stream
and turns graphs off for the process; every task's captured step reads nothing from the device, or the rules
refuse graphs for it; ``precision: auto`` never upcasts half-precision weights (a 7B LoRA on an sm90); the
``device_map`` branch shares a fused group's base; a kept checkpoint's vocabulary decay is its own."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpsearch.finetune import graphs as G
from tests.helpers import CPU, trial_hp


class _Stream:
    """Which stream the thread is on, as the stand-ins move it."""

    current = "default"


class _StreamContext:
    def __enter__(self) -> None:
        self.before, _Stream.current = _Stream.current, "capture"

    def __exit__(self, *args: object) -> None:
        _Stream.current = self.before


class _Graph:
    """A stand-in ``torch.cuda.CUDAGraph`` whose ``capture_end`` fails (as when the captured step read the
    device) or not."""

    fail_end = True
    resets = 0

    def capture_begin(self, *args: object, **kwargs: object) -> None:
        pass

    def capture_end(self) -> None:
        if _Graph.fail_end:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def replay(self) -> None:
        pass

    def reset(self) -> None:
        _Graph.resets += 1


class _Capture:
    """``torch.cuda.graph`` as torch writes it (torch/cuda/graphs.py): ``__enter__`` enters the capture stream and
    begins; ``__exit__`` ends the capture, then leaves the stream, so a ``capture_end`` that raises leaves the
    thread on the capture stream."""

    def __init__(self, cuda_graph: _Graph, pool: object = None) -> None:
        self.cuda_graph, self.stream_ctx = cuda_graph, _StreamContext()

    def __enter__(self) -> None:
        self.stream_ctx.__enter__()
        self.cuda_graph.capture_begin()

    def __exit__(self, *args: object) -> None:
        self.cuda_graph.capture_end()
        self.stream_ctx.__exit__(*args)


@pytest.fixture
def stand_in_cuda(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "graph", _Capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(G, "BROKEN", None)
    _Stream.current, _Graph.fail_end, _Graph.resets = "default", True, 0
    yield


def _graphs(body_fails: bool = False) -> G.StepGraphs:
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([w], lr=0.1)

    def forward_loss(inputs, labels):
        if body_fails and _Stream.current == "capture":
            raise RuntimeError("a read of the device during capture")
        return (w * inputs["x"]).sum()

    return G.StepGraphs(lambda batch: [({"x": batch}, torch.zeros(1), 1.0)], forward_loss, optimizer, [w], 0.0,
                        torch.zeros(()), capture=True)


@pytest.mark.parametrize("where", ["capture_end", "the step"])
def test_a_failed_capture_puts_the_thread_back_on_its_stream_and_turns_graphs_off_for_the_process(
        stand_in_cuda, where: str, capsys: pytest.CaptureFixture) -> None:
    if where == "the step":
        _Graph.fail_end = False
    steps = _graphs(body_fails=where == "the step")
    x = torch.ones(3)
    for _ in range(3):  # the first warms up, the second captures (and fails), the third runs eagerly
        loss = steps.step(x)
        assert _Stream.current == "default"
    assert torch.isfinite(loss) and steps.off.startswith("off: the capture failed (RuntimeError:")
    assert not steps.graphs and _Graph.resets >= 1
    assert G.BROKEN == steps.off and _graphs().off == G.BROKEN  # a later trial of this process starts off
    assert capsys.readouterr().err.count("off for the rest of this process") == 1


def test_a_capture_that_succeeds_is_replayed(stand_in_cuda) -> None:
    _Graph.fail_end = False
    steps = _graphs()
    for _ in range(3):
        steps.step(torch.ones(3))
    assert steps.off is None and len(steps.graphs) == 1 and _Stream.current == "default"


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Every read of a value (``item``, ``bool``, ``int``) or a data-dependent shape (``nonzero``): what a CUDA
    graph cannot capture."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


TASKS = ["classification", "regression", "token_classification", "question_answering", "seq2seq:t5",
         "seq2seq:bart", "causal_lm:gpt2", "causal_lm:llama"]


@pytest.mark.parametrize("task", TASKS)
def test_a_captured_step_reads_nothing_from_the_device_or_graphs_are_refused_for_the_task(
        task: str, tmp_path: Path, request: pytest.FixtureRequest, setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task's training forward and loss, forward and backward, as a captured step runs them on a GPU (the model
    built as there: SDPA attention, no CPU dropout lever; the loop's 4-D mask): no read of the device; a task that
    reads says so (``host_reads``) and ``model.cuda_graphs`` is refused for it, naming it."""
    from hpsearch.config.options import RunOptions
    from hpsearch.config.rules import space_problems
    from hpsearch.config.validation import validate
    from hpsearch.finetune import model as M
    from hpsearch.finetune.model import build_model
    from tests.finetune.test_fused import _task_setup

    monkeypatch.setattr(M, "install_cheap_dropout", lambda model: None)  # a CPU lever a GPU trial never gets

    if task == "classification":
        space, data = setup
    elif task == "causal_lm:llama":
        space, data = request.getfixturevalue("sft")
    else:
        space, data = _task_setup(task, tmp_path, request)
    from hpsearch.finetune.attention import additive_mask, compute_dtype

    model = build_model(space.model, trial_hp(space), data, CPU)
    additive_mask(model, compute_dtype(model, None))  # as the loop gives it (an encoder's mask, read nowhere)
    rows = torch.arange(8)
    batch, labels = data.train.batch(rows, CPU), data.train.labels_of(rows, CPU)
    t = data.task
    with _HostReads() as reads:
        t.loss(t.forward(model, batch, labels), labels).backward()
    assert bool(reads.found) == bool(t.host_reads), (reads.found, t.host_reads)
    raw = space.to_dict()
    raw["model"]["cuda_graphs"] = True
    refused = [p.text for p in space_problems(validate(raw), RunOptions(trials=1))]
    assert bool([p for p in refused if "model.cuda_graphs with data.task" in p]) == bool(t.host_reads), refused


def test_auto_never_upcasts_half_precision_weights_a_7b_lora_on_an_sm90_gets_bf16(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 7B LoRA with 200 tokens a step is launch-bound by the estimate (~32 ms of launches against ~26 ms of
    arithmetic), which chose fp32 and so loaded the frozen bf16 base in fp32 (26 GB, not 13)."""
    from hpsearch.finetune import precision as P

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    monkeypatch.setattr(P, "native_bf16", lambda device: True)
    lora_7b = P.Workload(matmul_parameters=6_500_000_000, layers=32, tokens_per_step=200)
    assert lora_7b.arithmetic_s(P.gpu_tf32_flops(torch.device("cuda"))) < lora_7b.launch_s()  # launch-bound
    plan = P.precision_plan("auto", "auto", torch.bfloat16, torch.device("cuda"), lora_7b)
    assert plan.name == "bf16-mixed" and plan.weights == torch.bfloat16, plan
    assert "launch-bound, but the weights load in bf16, which fp32 would upcast" in plan.reason
    asked = P.precision_plan("auto", "bfloat16", torch.float32, torch.device("cuda"), lora_7b)  # model.dtype too
    assert asked.name == "bf16-mixed" and asked.weights == torch.bfloat16
    minilm = P.Workload(matmul_parameters=10_600_000, layers=6, tokens_per_step=16 * 14)
    assert P.precision_plan("auto", "auto", torch.float32, torch.device("cuda"), minilm).name == "fp32"


def test_the_device_map_branch_builds_lora_members_on_one_shared_base(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU ``from_pretrained`` gets a ``device_map``: run that branch here (the CPU as the map's device), and the
    members built on a fused group's base still hold that base's tensors, not copies."""
    from hpsearch.finetune import model as M

    space, data = setup
    monkeypatch.setattr(M, "placement_of", lambda device: {"device_map": {"": device}})
    base = M.shared_base(space.model, data, CPU)
    shared = {t.untyped_storage().data_ptr() for t in base.values()}
    members = [M.build_model(space.model, trial_hp(space, lora_r=4, seed=i), data, CPU, base=base) for i in range(2)]
    for member in members:
        held = {p.untyped_storage().data_ptr() for n, p in member.named_parameters() if not p.requires_grad}
        assert len(held & shared) >= len(shared) - 2, "a member copied the base"  # every body matrix (a pooler aside)


def test_a_kept_checkpoint_keeps_its_own_vocabulary_decay_with_a_tensor_learning_rate(setup) -> None:
    """Under CUDA graphs the learning rate is a device tensor: the decay became one and was then scaled in place,
    so the best checkpoint ``keep: best`` restores carried the final decay."""
    from hpsearch.finetune.checkpoints import Selection, Tracker
    from hpsearch.finetune.model import build_model
    from hpsearch.finetune.vocab import shrink_vocabulary

    space, data = setup
    model = build_model(space.model, trial_hp(space, weight_decay=0.1), data, CPU)
    vocab = shrink_vocabulary(model, data)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": trainable, "weight_decay": 0.1}], lr=torch.tensor(0.01),
                                  foreach=False)
    vocab.track(optimizer)
    tracker = Tracker(Selection("accuracy", True, keep="best"))

    def step() -> None:
        for p in trainable:
            p.grad = torch.zeros_like(p)
        optimizer.step()

    step()
    step()
    tracker.update(model, {"accuracy": 0.9}, 1, 0.5, extra=vocab.decay)
    kept = float(tracker.extra)
    for _ in range(5):
        step()
    assert float(tracker.extra) == pytest.approx(kept) and float(vocab.decay) < kept

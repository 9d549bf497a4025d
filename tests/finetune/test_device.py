"""Where a model trains and in what precision: the device a run names, and when bf16 autocast is on."""
from __future__ import annotations

import pytest
import torch

from hpsearch.errors import HpsearchError
from hpsearch.finetune import device as D
from hpsearch.finetune import precision as P


def test_a_cuda_device_without_a_gpu_is_an_error_naming_the_flag() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(HpsearchError, match="--device cuda"):
        D.resolve_device("cuda")
    assert D.resolve_device("auto").type == "cpu"
    assert D.resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_number_beyond_the_machine_s_gpus_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(HpsearchError, match="--device cuda:2: this machine has 2 GPU"):
        D.resolve_device("cuda:2")


def test_precision_is_said_per_key_and_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    bf16 = torch.bfloat16
    assert P.precision_plan("fp32", "auto", bf16, cpu) == P.FP32  # fp32 means fp32 weights, whatever was saved
    mixed = P.precision_plan("bf16", "auto", bf16, cpu)  # asked for by name: on, native or not
    assert (mixed.weights, mixed.master, mixed.autocast, mixed.scaler) == (bf16, torch.float32, bf16, False)
    assert P.precision_plan("bf16", "float32", bf16, cpu).weights == torch.float32  # model.dtype chooses the load
    assert P.precision_plan("bf16", "auto", None, cpu).weights == torch.float32  # a config without a dtype: fp32
    half = P.precision_plan("fp16", "auto", None, cpu)
    assert (half.master, half.autocast, half.scaler) == (torch.float32, torch.float16, True)
    pure = P.precision_plan("bf16-true", "auto", torch.float32, cpu)
    assert (pure.weights, pure.master, pure.autocast) == (bf16, bf16, None)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    emulated = P.precision_plan("auto", "auto", bf16, cpu)
    assert emulated.name == "fp32" and "without native bf16" in emulated.reason  # emulated bf16 is slower: off
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.precision_plan("auto", "auto", None, cpu).name == "bf16-mixed"


MINILM = P.Workload(matmul_parameters=10_600_000, layers=6, tokens_per_step=32 * 14)
"""all-MiniLM-L6-v2 on SST-2 at batch 32: 6 layers of 1.77M matrix parameters, 14 tokens a row."""
LLAMA_7B = P.Workload(matmul_parameters=6_500_000_000, layers=32, tokens_per_step=4 * 1024)


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], name: str, bf16: bool) -> torch.device:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(P, "native_bf16", lambda device: bf16)
    return torch.device("cuda", 0)


def test_auto_on_a_gpu_weighs_kernel_launches_against_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = _fake_gpu(monkeypatch, (9, 0), "NVIDIA H200", bf16=True)
    small = P.precision_plan("auto", "auto", None, gpu, MINILM)
    assert small.name == "fp32" and small.autocast is None  # launch-bound: no casts, TF32 products
    assert "launch-bound" in small.reason and "TF32" in small.reason and "NVIDIA H200 (sm90)" in small.reason
    large = P.precision_plan("auto", "auto", torch.bfloat16, gpu, LLAMA_7B)
    assert large.name == "bf16-mixed" and large.weights == torch.bfloat16 and "compute-bound" in large.reason
    assert P.precision_plan("auto", "auto", None, gpu, None).name == "bf16-mixed"  # unknown (quantized): large
    assert P.precision_plan("bf16", "auto", None, gpu, MINILM).reason == "asked for by model.precision"
    # where the arithmetic is slower the crossover comes sooner: an A10 (sm86) computes BERT-base at 4k tokens
    bert = P.Workload(matmul_parameters=85_000_000, layers=12, tokens_per_step=32 * 128)
    assert P.precision_plan("auto", "auto", None, gpu, bert).name == "fp32"  # an H200 launches longer than it computes
    a10 = _fake_gpu(monkeypatch, (8, 6), "NVIDIA A10", bf16=True)
    assert P.precision_plan("auto", "auto", None, a10, bert).name == "bf16-mixed"


def test_auto_precision_on_a_gpu_without_native_bf16_is_fp16_with_a_loss_scaler(monkeypatch) -> None:
    gpu = _fake_gpu(monkeypatch, (7, 5), "Tesla T4", bf16=False)  # bf16 would be emulated
    plan = P.precision_plan("auto", "auto", torch.bfloat16, gpu, LLAMA_7B)
    assert plan.name == "fp16-mixed" and plan.scaler
    small = P.precision_plan("auto", "auto", None, gpu, MINILM)
    assert small.name == "fp32" and "fp32 matrix products" in small.reason  # no TF32 on Turing
    with pytest.raises(HpsearchError, match="Tesla T4 has no native bf16"):
        P.precision_plan("bf16", "auto", None, gpu)


def test_a_space_s_typical_pass() -> None:
    assert P.typical_pass({}, {"batch_size": 32, "micro_batch_size": 0}) == 32
    assert P.typical_pass({}, {"batch_size": 32, "micro_batch_size": 8}) == 8
    assert P.typical_pass({"batch_size": {"type": "categorical", "choices": [64, 16, 32]}}, {}) == 32
    assert P.typical_pass({"batch_size": {"type": "int", "low": 8, "high": 128, "log": True}}, {}) == 32


def test_a_packed_worker_caps_its_share_of_the_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    monkeypatch.delenv(D.MEMORY_FRACTION_ENV, raising=False)
    D.resolve_device("cuda")
    assert calls == []  # a worker alone on its GPU is not capped
    monkeypatch.setenv(D.MEMORY_FRACTION_ENV, "0.25")
    assert D.resolve_device("auto") == torch.device("cuda")
    assert calls == [(0.25, 0)]
    monkeypatch.setenv(D.MEMORY_FRACTION_ENV, "0.5")
    D.resolve_device("cuda:0")
    assert calls[-1] == (0.5, 0)
    for bad in ("0", "1.5", "half"):
        monkeypatch.setenv(D.MEMORY_FRACTION_ENV, bad)
        with pytest.raises(HpsearchError, match=f"{D.MEMORY_FRACTION_ENV}='{bad}': must be a fraction"):
            D.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == torch.device("cpu")  # no GPU: nothing to cap, no error


def test_a_space_s_workload_is_counted_from_its_model_and_data(setup) -> None:
    from hpsearch.finetune.recipe import workload

    space, data = setup
    work = workload(space, data)
    # the tiny BERT: 2 layers of q, k, v, output (32 x 32) and the MLP (32 x 64, 64 x 32), the pooler, the head
    assert work.layers == 2 and work.matmul_parameters == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32 + 2 * 32
    assert work.tokens_per_step == pytest.approx(16 * float(data.train.lengths.float().mean()))


def test_a_cpu_trial_s_peak_memory_is_its_own_process_s() -> None:
    """A worker spawned by a large parent: ``ru_maxrss`` counts the parent's memory the child had before its exec
    (Linux keeps the old image's high-water mark), ``peak_memory_mb`` only the worker's own."""
    import subprocess
    import sys

    big = bytearray(600 * 2**20)
    big[:: 4096] = b"\1" * len(big[:: 4096])  # resident
    code = ("import torch; from hpsearch.finetune.device import peak_memory_mb; "
            "print(peak_memory_mb(torch.device('cpu')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    del big
    assert float(done.stdout) < 500  # the child's own (torch imported: ~300 MB), not its parent's 600 MB and more

"""Where a model trains and in what precision: the device a run names, and when bf16 autocast is on."""
from __future__ import annotations

import pytest
import torch

from hpsearch.errors import HpsearchError
from hpsearch.finetune import device as D


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
    assert D.precision_plan("fp32", "auto", bf16, cpu) == D.FP32  # fp32 means fp32 weights, whatever was saved
    mixed = D.precision_plan("bf16", "auto", bf16, cpu)  # asked for by name: on, native or not
    assert (mixed.weights, mixed.master, mixed.autocast, mixed.scaler) == (bf16, torch.float32, bf16, False)
    assert D.precision_plan("bf16", "float32", bf16, cpu).weights == torch.float32  # model.dtype chooses the load
    assert D.precision_plan("bf16", "auto", None, cpu).weights == torch.float32  # a config without a dtype: fp32
    half = D.precision_plan("fp16", "auto", None, cpu)
    assert (half.master, half.autocast, half.scaler) == (torch.float32, torch.float16, True)
    pure = D.precision_plan("bf16-true", "auto", torch.float32, cpu)
    assert (pure.weights, pure.master, pure.autocast) == (bf16, bf16, None)
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    assert D.precision_plan("auto", "auto", bf16, cpu) == D.FP32  # emulated bf16 is slower: auto leaves it off
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    assert D.precision_plan("auto", "auto", None, cpu).name == "bf16-mixed"


def test_auto_precision_on_a_gpu_without_native_bf16_is_fp16_with_a_loss_scaler(monkeypatch) -> None:
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(D, "native_bf16", lambda device: False)  # a V100 or T4: bf16 would be emulated
    assert D.precision_plan("auto", "auto", torch.bfloat16, gpu).name == "fp16-mixed"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(HpsearchError, match="Tesla T4 has no native bf16"):
        D.precision_plan("bf16", "auto", None, gpu)
    monkeypatch.setattr(D, "native_bf16", lambda device: True)
    assert D.precision_plan("auto", "auto", None, gpu).name == "bf16-mixed"


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

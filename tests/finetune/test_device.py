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


def test_bf16_follows_the_precision_key_and_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert D.use_bf16("fp32", cpu) is False
    assert D.use_bf16("bf16", cpu) is True  # asked for by name: on, native or not
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    assert D.use_bf16("auto", cpu) is False  # emulated bf16 is slower: auto leaves it off
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    assert D.use_bf16("auto", cpu) is True

"""The CPU's cheaper dropout: right statistics, seeded, and a swapped model computes what the original does."""
from __future__ import annotations

import pytest
import torch

from hpsearch.finetune import dropout as D
from hpsearch.finetune import model as M
from tests.helpers import CPU
from tests.helpers import trial_hp as _hp


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_mask_drops_p_and_keeps_the_expectation(p: float) -> None:
    mask = D.keep_mask(torch.Size([1000, 1000]), p, torch.float32, CPU)
    assert mask.unique().tolist() == pytest.approx([0.0, 1.0 / (1.0 - p)])
    assert float((mask == 0).float().mean()) == pytest.approx(p, abs=0.002)  # 1e6 draws: sd 0.0003
    assert float(mask.mean()) == pytest.approx(1.0, abs=0.005)
    rows = (mask == 0).float().mean(1)  # no position is favoured: each row drops p too
    assert float(rows.std()) < 0.02


def test_masks_follow_the_seed_and_edge_rates() -> None:
    x = torch.ones(64, 33)
    torch.manual_seed(3)
    a = D.dropout(x, 0.2, True)
    torch.manual_seed(3)
    assert torch.equal(a, D.dropout(x, 0.2, True))
    assert not torch.equal(a, D.dropout(x, 0.2, True))
    assert D.dropout(x, 0.2, False) is x and D.dropout(x, 0.0, True) is x
    assert torch.equal(D.dropout(x, 1.0, True), torch.zeros_like(x))


def _batch(data) -> dict:
    idx = torch.argsort(data.train.lengths)[::7]  # mixed lengths: padding and its mask are exercised
    return data.train.batch(idx.contiguous(), CPU)


def test_swapped_model_computes_what_the_original_computes(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    space, data = setup
    hp = _hp(space, dropout=0.2)
    with monkeypatch.context() as m:
        m.setattr(M, "install_cheap_dropout", lambda model: False)
        original = M.build_model(space.model, hp, data, CPU)
    model = M.build_model(space.model, hp, data, CPU)  # on the CPU: cheaper dropout installed
    assert model.config._attn_implementation == D.ATTENTION
    assert all(type(m) is not torch.nn.Dropout for m in model.modules())
    assert original.config._attn_implementation == "sdpa"
    assert all(type(m) is torch.nn.Dropout for m in original.modules() if isinstance(m, torch.nn.Dropout))
    batch = _batch(data)
    model.eval(), original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, original(**batch).logits, rtol=0, atol=0)
    # Training mode with masks of ones: the eager attention path must equal SDPA without dropout.
    monkeypatch.setattr(D, "keep_mask", lambda shape, p, dtype, device: torch.ones(shape, dtype=dtype))
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, original(**batch).logits, rtol=1e-5, atol=1e-5)


def test_attention_dropout_is_applied(setup) -> None:
    space, data = setup
    model = M.build_model(space.model, _hp(space, dropout=0.3), data, CPU)
    for name, module in model.named_modules():  # leave only the attention-probability dropout on
        if isinstance(module, torch.nn.Dropout) and not name.endswith("attention.self.dropout"):
            module.p = 0.0
    batch = _batch(data)
    model.train()
    with torch.no_grad():
        a, b = model(**batch).logits, model(**batch).logits
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**batch).logits)


def test_attention_without_dropout_computes_half_precision_inputs_in_fp32() -> None:
    """The CPU's fused kernel is 3-7x slower in bf16 than in fp32 (bench/results/CPU_ATTENTION.md): bf16 inputs are
    attended in fp32 and the output handed back in bf16, equal to SDPA on fp32 copies."""
    import torch.nn.functional as F

    from hpsearch.finetune.dropout import attention

    module = torch.nn.Module().eval()
    module.is_causal = False
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 5)
    mask[1, ..., 3:] = torch.finfo(torch.bfloat16).min
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: autocast would cast fp32 inputs back
        out, _ = attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask.bfloat16())
    want = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                          attn_mask=mask.bfloat16().float()).transpose(1, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want.bfloat16(), rtol=0, atol=0)

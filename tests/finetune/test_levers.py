"""The large-model levers keep the numbers: accumulation over micro-batches equals one pass over the batch,
gradient checkpointing gives the same loss, mixed precision keeps fp32 master weights (and pure bf16 none), and
evaluation batches are cut by tokens, not rows."""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from hpsearch.config.validation import validate
from hpsearch.finetune import batching as B
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import optim as O
from hpsearch.finetune import state as S
from hpsearch.finetune.data import prepare
from hpsearch.finetune.precision import FP32, precision_plan
from tests.helpers import CPU, trial_hp

CONSTANT = {"scheduler": "constant", "dropout": 0.0, "warmup_ratio": 0.0}


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(space, data, settings=S.TrainSettings(reports_per_epoch=1), precision=FP32, model_cfg=None, **hp):
    hp = trial_hp(space, **{**CONSTANT, **hp})
    model = M.build_model(model_cfg or space.model, hp, data, CPU, precision)
    result = T.train(model, data, hp, settings, device=CPU)
    return model, result


def test_accumulated_micro_batches_give_the_update_of_one_batch(setup) -> None:
    space, data = setup
    whole, a = _train(space, data, batch_size=16, epochs=1)
    parts, b = _train(space, data, batch_size=16, micro_batch_size=5, epochs=1)  # 5 + 5 + 5 + 1 rows
    assert a.steps == b.steps == 12 and b.history[-1]["step"] == 12
    for (name, x), y in zip(_params(whole).items(), _params(parts).values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-6, msg=name)


@pytest.fixture
def ragged_sft(tmp_path: Path, tiny_decoders) -> tuple:
    """Causal-LM rows whose responses run from 1 to 12 words: a micro-batch's mean loss is over very different
    token counts, so weighting micro-batches by rows instead of learned tokens would show."""
    rng = random.Random(0)
    words = "alice bob carol dave paris rome oslo met visited went to the and".split()
    for name, n in (("train", 48), ("dev", 8)):
        rows = [{"prompt": " ".join(rng.choices(words, k=3)),
                 "response": " ".join(rng.choices(words, k=rng.randint(1, 12)))} for _ in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {"study": {"name": "sft", "pruner": "none"},
           "model": {"name_or_path": str(tiny_decoders["llama"]), "max_length": 32},
           "data": {"task": "causal_lm", "prompt_column": "prompt", "response_column": "response",
                    "train": {"path": str(tmp_path / "train.jsonl")},
                    "validation": {"path": str(tmp_path / "dev.jsonl")}},
           "params": {}, "fixed": {"batch_size": 12, "epochs": 1, "seed": 0, "learning_rate": 1e-2}}
    space = validate(raw)
    data = prepare(space.data, M.load_tokenizer(space.model), 32)
    return space, data


def test_accumulation_weights_micro_batches_by_learned_tokens(ragged_sft) -> None:
    space, data = ragged_sft
    whole, _ = _train(space, data, batch_size=12)
    parts, _ = _train(space, data, batch_size=12, micro_batch_size=4)
    for (name, x), y in zip(_params(whole).items(), _params(parts).values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_gradient_checkpointing_gives_the_same_training(ragged_sft) -> None:
    space, data = ragged_sft
    plain, a = _train(space, data, batch_size=12, epochs=2)
    checkpointed_cfg = dataclasses.replace(space.model, gradient_checkpointing=True)
    checkpointed, b = _train(space, data, model_cfg=checkpointed_cfg, batch_size=12, epochs=2)
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    assert a.metrics["eval_loss"] == pytest.approx(b.metrics["eval_loss"], rel=1e-4)
    for (name, x), y in zip(_params(plain).items(), _params(checkpointed).values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT saved in bfloat16 (config.json says so), as most large checkpoints are."""
    from transformers import AutoTokenizer, BertModel

    path = tmp_path_factory.mktemp("bf16-bert")
    BertModel.from_pretrained(tiny_model).to(torch.bfloat16).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return path


@pytest.mark.parametrize("precision, trained, frozen, autocast", [
    ("bf16", torch.float32, torch.bfloat16, torch.bfloat16),    # mixed: fp32 master weights, frozen as loaded
    ("fp16", torch.float32, torch.bfloat16, torch.float16),     # mixed with a loss scaler
    ("fp32", torch.float32, torch.float32, None),               # fp32 means every weight in fp32
    ("bf16-true", torch.bfloat16, torch.bfloat16, None),        # pure bf16: asked for by name only
])
def test_a_bf16_checkpoint_trains_in_the_precision_asked_for(precision, trained, frozen, autocast, setup,
                                                             bf16_checkpoint: Path) -> None:
    space, data = setup
    model_cfg = dataclasses.replace(space.model, name_or_path=str(bf16_checkpoint), precision=precision)
    plan = precision_plan(precision, "auto", M.checkpoint_dtype(model_cfg), CPU)
    assert plan.autocast == autocast
    hp = trial_hp(space, **CONSTANT, num_frozen_layers=1, epochs=1)
    model = M.build_model(model_cfg, hp, data, CPU, plan)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {trained}
    assert {p.dtype for p in model.parameters() if not p.requires_grad and p.ndim > 1} == {frozen}
    result = T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1, precision=plan), device=CPU)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.steps == 12
    optimizer = O.make_optimizer(model, hp, CPU)
    assert all(p.dtype == trained for group in optimizer.param_groups for p in group["params"])


def test_the_host_copy_of_the_weights_keeps_the_checkpoint_dtype_and_trials_never_write_into_it(
        setup, bf16_checkpoint: Path) -> None:
    space, data = setup
    model_cfg = dataclasses.replace(space.model, name_or_path=str(bf16_checkpoint), precision="bf16-true")
    plan = precision_plan("bf16-true", "auto", torch.bfloat16, CPU)
    hp = trial_hp(space, **CONSTANT, epochs=1, learning_rate=1e-2)
    config = M.head_config(model_cfg, data)
    cache = M._pretrained_weights(model_cfg, config, "AutoModelForSequenceClassification")
    assert {v.dtype for v in cache.values()} == {torch.bfloat16}  # half the host memory of an fp32 copy
    before = {k: v.clone() for k, v in cache.items()}
    model = M.build_model(model_cfg, hp, data, CPU, plan)
    T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1, precision=plan, shrink_vocab=False), device=CPU)
    assert all(torch.equal(before[k], cache[k]) for k in cache)


def test_a_trial_s_new_head_depends_on_its_seed_only(setup) -> None:
    space, data = setup
    heads = [M.build_model(space.model, trial_hp(space, seed=s), data, CPU).classifier.weight.detach()
             for s in (3, 4, 3)]
    assert torch.equal(heads[0], heads[2]) and not torch.equal(heads[0], heads[1])
    assert 0.005 < float(heads[0].std()) < 0.05  # initialised as the model initialises a head (std 0.02)


def test_evaluation_batches_are_cut_by_tokens() -> None:
    lengths = torch.tensor([1024] * 40 + [64] * 300)
    batches = B.eval_batches(lengths, max_tokens=16384, max_rows=64)
    assert sorted(torch.cat(batches).tolist()) == list(range(340))
    widths = [int(lengths[b].max()) * len(b) for b in batches]
    assert max(widths) <= 16384 and [len(b) for b in batches[:4]] == [16, 16, 16, 64]
    assert max(len(b) for b in batches) == 64  # short rows: the row cap
    assert [len(b) for b in B.eval_batches(torch.tensor([5000, 10]), max_tokens=100)] == [1, 1]


def test_what_no_trial_can_train_is_a_config_error(tiny_model: Path, tiny_data: dict) -> None:
    """(What the machine must offer a model, a CUDA GPU or a package, is a rule of the run: tests/config/
    test_rules.py.)"""
    from hpsearch.config.validation import validate
    from hpsearch.errors import ConfigError
    from tests.helpers import space_dict

    with pytest.raises(ConfigError) as err:  # quantized weights are not trained: every trial needs adapters
        validate(space_dict(tiny_model, tiny_data, model__quantization="4bit"))
    assert "params" not in str(err.value) and "fixed.lora_r" in str(err.value)
    with pytest.raises(ConfigError, match="model.dtype"):
        validate(space_dict(tiny_model, tiny_data, model__precision="fp32", model__dtype="bfloat16"))


def test_deterministic_turns_on_torch_s_deterministic_algorithms(setup, tiny_model: Path, tiny_data: dict) -> None:
    from hpsearch.config.validation import validate
    from hpsearch.finetune.recipe import prepare as prepare_run
    from tests.helpers import space_dict

    space = validate(space_dict(tiny_model, tiny_data, study__deterministic=True))
    try:
        prepare_run(space, "cpu", weights=False)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_on_a_gpu_a_non_finite_loss_is_caught_at_the_next_report_without_a_sync_per_step() -> None:
    from types import SimpleNamespace

    run = SimpleNamespace(loss_total=torch.zeros(()), checked_step=0, state=SimpleNamespace(step=0))
    for step, loss in enumerate((0.5, 0.4), 1):
        run.state.step = step
        T._check_finite(run, torch.tensor(loss))  # a device tensor kept, no comparison on the host
    T._raise_nonfinite(run)  # a report: steps 1-2 were finite
    for step, loss in enumerate((0.3, float("nan"), 0.3, float("inf")), 3):
        run.state.step = step
        T._check_finite(run, torch.tensor(loss))
    with pytest.raises(S.NonFiniteLoss, match="non-finite between steps 3 and 6"):
        T._raise_nonfinite(run)
    run.loss_total, run.checked_step = torch.tensor(float("-inf")) + float("inf"), 0  # inf - inf is nan: caught
    with pytest.raises(S.NonFiniteLoss):
        T._raise_nonfinite(run)

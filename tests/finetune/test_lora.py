"""LoRA through peft: rank searched next to full fine-tuning, only adapters and head trained, frozen blocks keep no
trainable adapter, a merged save that loads without peft, --adapter-only, and bad settings refused with exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hpsearch.config.validation import validate
from hpsearch.errors import ConfigError
from hpsearch.finetune import loop as T
from hpsearch.finetune import model as M
from hpsearch.finetune import state as S
from hpsearch.finetune.modeldir import write_model_dir
from tests.helpers import CPU, space_dict, trial_hp


def lora_space(tiny_model: Path, tiny_data: dict, **fixed: object) -> dict:
    raw = space_dict(tiny_model, tiny_data)
    raw["fixed"].update({"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["query", "value"], **fixed})
    return raw


def test_lora_settings_are_validated_and_a_list_of_modules_is_normalized(tiny_model: Path, tiny_data: dict) -> None:
    space = validate(lora_space(tiny_model, tiny_data))
    assert space.fixed["lora_target_modules"] == "query,value" and space.fixed["lora_r"] == 4
    bad = lora_space(tiny_model, tiny_data, lora_r=-1, lora_alpha=0, lora_dropout=1.5, lora_target_modules=[])
    with pytest.raises(ConfigError) as err:
        validate(bad)
    keys = {i.key for i in err.value.issues}
    assert keys == {"fixed.lora_r", "fixed.lora_alpha", "fixed.lora_dropout", "fixed.lora_target_modules"}
    default = validate(space_dict(tiny_model, tiny_data))
    assert default.fixed["lora_r"] == 0 and default.fixed["lora_target_modules"] == "all-linear"


def test_only_adapters_and_the_head_train_and_frozen_blocks_keep_none(setup, tiny_model: Path, tiny_data) -> None:
    _, data = setup
    space = validate(lora_space(tiny_model, tiny_data))
    hp = trial_hp(space, num_frozen_layers=1, learning_rate=5e-3)
    model = M.build_model(space.model, hp, data, CPU)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable), sorted(trainable)
    assert not any(".layer.0." in n for n in trainable)  # the frozen block: no trainable adapter
    assert any(".layer.1." in n and "lora_" in n for n in trainable)
    assert any("classifier" in n and "modules_to_save" in n for n in trainable)  # the new head, in full
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1), device=CPU)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= trainable


def test_merged_save_loads_without_peft_and_computes_the_same(setup, tiny_model: Path, tiny_data, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    _, data = setup
    space = validate(lora_space(tiny_model, tiny_data, lora_target_modules="all-linear"))
    hp = trial_hp(space, learning_rate=5e-3)
    model = M.build_model(space.model, hp, data, CPU)
    T.train(model, data, hp, S.TrainSettings(reports_per_epoch=1), device=CPU)
    batch = data.validation.batch(torch.arange(8), CPU)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    write_model_dir(tmp_path / "m", model, M.load_tokenizer(space.model), {}, space.to_dict())
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_rank_searched_against_full_fine_tuning_through_the_cli(make_space, hpsearch, tmp_path: Path) -> None:
    path = make_space(params__lora_r={"type": "categorical", "choices": [0, 4]},
                      fixed__lora_target_modules=["query", "value"], fixed__epochs=1,
                      study__enqueue=[{"learning_rate": 3e-3, "dropout": 0.0, "lora_r": 0},
                                      {"learning_rate": 3e-3, "dropout": 0.0, "lora_r": 4}])
    hpsearch("run", "--space", str(path), "--trials", "2", "--quiet", check=True)
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert [t.params["lora_r"] for t in study.trials] == [0, 4]
    config = yaml.safe_load(path.read_text())
    config["params"] = {}
    config["study"].pop("enqueue")
    config["fixed"].update(lora_r=4, learning_rate=3e-3, dropout=0.0)
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(config))
    hpsearch("train", "--config", "lora.yaml", "--output-dir", "adapter", "--adapter-only", "--quiet", check=True)
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"query", "value"}
    full = hpsearch("train", "--config", "lora.yaml", "--output-dir", "plain", "--adapter-only", "--quiet",
                    "--set", "fixed.lora_r=0")
    assert full.returncode == 2 and "--adapter-only needs fixed.lora_r > 0" in full.stderr


def test_unknown_target_module_is_refused_before_anything_is_written(make_space, hpsearch, tmp_path: Path) -> None:
    path = make_space(fixed__lora_r=4, fixed__lora_target_modules=["query", "q_proj"])
    proc = hpsearch("run", "--space", str(path), "--trials", "1")
    assert proc.returncode == 2, proc.stderr
    assert "fixed.lora_target_modules" in proc.stderr and "(q_proj)" in proc.stderr and "query" in proc.stderr
    assert not (tmp_path / "studies.db").exists()


@pytest.mark.parametrize("peft_task, auto, head", [("TOKEN_CLS", "AutoModelForTokenClassification", "classifier"),
                                                   ("QUESTION_ANS", "AutoModelForQuestionAnswering", "qa_outputs"),
                                                   ("SEQ_CLS", "AutoModelForSequenceClassification", "classifier")])
def test_all_linear_adapts_every_linear_layer_but_the_head_trained_in_full(tiny_model: Path, peft_task: str,
                                                                         auto: str, head: str) -> None:
    """peft's all-linear leaves out only a sequence classifier's head; on a token-classification or span head it
    also put an adapter, which then clashed with training the head in full (a TypeError at every trial)."""
    import transformers

    from hpsearch.config.vocabulary import Hyperparameters
    from hpsearch.finetune.lora import apply

    torch.manual_seed(0)
    model = getattr(transformers, auto).from_pretrained(tiny_model, num_labels=3)
    wrapped = apply(model, Hyperparameters(lora_r=4), peft_task, None)
    adapted = {n.rsplit(".lora_A", 1)[0].removeprefix("base_model.model.") for n, _ in wrapped.named_parameters()
               if ".lora_A." in n}
    linear = {n for n, m in wrapped.get_base_model().named_modules() if type(m).__name__ == "Linear"
              and ".lora_" not in n and not n.endswith((".base_layer", "original_module"))
              and "modules_to_save" not in n and not n.startswith(head)}
    assert adapted == {n.removesuffix(".base_layer") for n in linear} and adapted  # every body linear layer
    trained = {n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained and all(f"{head}.modules_to_save" in n for n in trained)  # the head in full, nothing else


def test_a_lora_span_model_reads_the_token_types(tiny_model: Path) -> None:
    """peft's question-answering wrapper drops token_type_ids (and position_ids) before calling the model: a LoRA
    span model then trained as if every token were the question's, and the merged model, given the types, answered
    differently than it was evaluated. The wrapper now passes every input on."""
    from transformers import AutoModelForQuestionAnswering

    from hpsearch.config.vocabulary import Hyperparameters
    from hpsearch.finetune.lora import apply

    torch.manual_seed(0)
    plain = AutoModelForQuestionAnswering.from_pretrained(tiny_model).eval()
    wrapped = apply(AutoModelForQuestionAnswering.from_pretrained(tiny_model), Hyperparameters(lora_r=4),
                    "QUESTION_ANS", None).eval()
    wrapped.base_model.model.qa_outputs.modules_to_save["default"].load_state_dict(plain.qa_outputs.state_dict())
    ids = torch.tensor([[2, 7, 8, 3, 9, 10, 11, 3]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        want = plain(input_ids=ids, token_type_ids=types).start_logits
        got = wrapped(input_ids=ids, token_type_ids=types).start_logits
        without = plain(input_ids=ids).start_logits
    torch.testing.assert_close(got, want)  # adapters start at zero: the same model
    assert not torch.allclose(want, without)  # and the types do matter to it

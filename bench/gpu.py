"""GPU measurements, one command, written to run right the first time a GPU is at hand (at most 8 minutes on an H100).

    python -m bench.gpu --out bench/results/GPU.md        # on a GPU machine
    python -m bench.gpu --reduced --out /tmp/gpu.md       # the same steps at toy sizes on the CPU (a test runs it)

On this project's lent GPU machines nothing can be downloaded and the image lacks optuna and datasets: the one
command to run there is ``bench/gpu_run.sh`` (it installs the wheels ``bash bench/gpu_wheels.sh`` made in ``.whl/``,
offline, and runs these sections, each with ``--only NAME`` in a process of its own, within a budget of its own;
``--list`` names them). For the Trainer comparison carry the anchor too (``mkdir -p .gpu && cp
../shared/bench/trainer_baseline.py .gpu/``; ``carry: [".whl", ".gpu"]``).

No weights are downloaded either: every model is built here with random weights in the shape it stands for (speed
and memory do not depend on the values). Each section runs on its own; one that fails is reported as failed and the
others still run. Sections:

1. **memory given back**: 10 trials of a MiniLM-shaped classifier (6 layers, hidden 384) on SST-2, each pruned at
   its first report, through hpsearch's objective; the GPU memory allocated after each trial against before the
   first (it must not grow after the first trial, which leaves the cuBLAS workspaces: 64 MiB on an H200).
2. **evaluation of a 128k vocabulary**: a Llama-shaped decoder with Llama 3's 128,256-token vocabulary evaluates
   16 rows of 1,024 tokens (``eval_batch_tokens`` 16,384): its peak memory, against the 8.4 GB one batch's fp32
   logits would take.
3. **a 7B LoRA trial**: Llama-7B-shaped slices (hidden 4,096, 2 and 4 of its 32 layers, vocabulary 32,000), bf16
   weights, LoRA r 16 on every linear layer, batches of 4 x 1,024 tokens, through hpsearch's build and loop: setup
   time and peak memory with and without gradient checkpointing, and with 4-bit weights (bitsandbytes); peak memory
   scaled to 32 layers from the two slices (the per-layer cost is their difference).
4. **a MiniLM trial in each precision, with and without CUDA graphs** (run first: it decides issue #35): auto,
   fp32 (TF32), bf16 mixed, bf16-true, each also with ``model.cuda_graphs``; per variant a warm trial's seconds
   and ms per step against the Trainer anchor's warm trial, the plan ``auto`` chose and why, and the first and a
   second evaluation of the same batches (equal when no per-shape attention plan is built).
5. **a MiniLM trial against Trainer**: ``python -m bench.run`` on the configs of ``bench/configs/configs_other.json``,
   one round, on CUDA (a MiniLM-shaped model with random weights on both sides).

``bench/gpu_run.sh`` then runs fused trials (issue #36: ``bench.fused`` at K = 1, 4, 16 on bench/packing.py's
MiniLM configs, and the launches of a member's step; check first what FUSED.md's launch counts predict).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench.common import CONFIGS, REPO, RESULTS, machine, now, raw_path

SST2 = REPO / "data" / "sst2"


def gpu_mb() -> tuple[float, float]:
    """(allocated, peak allocated) GPU memory in MB since the last reset; (0, 0) on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def words_vocab(rows: int = 4000) -> list[str]:
    """A word-level WordPiece vocabulary of SST-2's first training rows (the tokenizer every model here uses)."""
    import csv

    with open(SST2 / "train.tsv", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        words = {w for i, row in zip(range(rows), reader) for w in row["sentence"].lower().split()}
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)


def save_tokenizer(path: Path, vocab: list[str]) -> None:
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, eos_token="[SEP]").save_pretrained(path)


def save_bert(path: Path, reduced: bool) -> Path:
    """A MiniLM-shaped BERT (6 layers, hidden 384; reduced: 2 layers, hidden 32) with random weights."""
    import torch
    from transformers import BertConfig, BertModel

    vocab = words_vocab()
    save_tokenizer(path, vocab)
    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if not reduced:
        size = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=max(30522, len(vocab)), max_position_embeddings=512, **size)).save_pretrained(
        path, safe_serialization=True)
    return path


def save_llama(path: Path, layers: int, hidden: int, vocab: int, inter: int, heads: int, kv: int) -> Path:
    """A Llama-shaped causal LM with random bf16 weights (the tokenizer of :func:`words_vocab`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    save_tokenizer(path, words_vocab())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    del model
    return path


def text_rows(path: Path, rows: int, words: int) -> Path:
    """JSONL rows of ``words`` SST-2 words each (a causal LM's ``text``)."""
    vocab = words_vocab()[5:]
    path.write_text("".join(json.dumps({"text": " ".join(vocab[(i * 7 + j) % len(vocab)] for j in range(words))})
                            + "\n" for i in range(rows)))
    return path


def space_for(raw: dict) -> Any:
    from hpsearch.config.validation import validate

    return validate(raw)


# ---------------------------------------------------------------------------------------------------------------


def memory_after_pruned_trials(work: Path, reduced: bool) -> dict:
    import optuna
    import torch

    from hpsearch.finetune import recipe
    from hpsearch.study.objective import Objective

    model = save_bert(work / "minilm", reduced)
    space = space_for({
        "study": {"name": "memory", "metric": "accuracy", "sampler": {"name": "random", "seed": 0}},
        "model": {"name_or_path": str(model), "max_length": 64},
        "data": {"task": "classification", "label_column": "label",
                 "train": {"path": str(SST2 / "train.tsv"), "text_column": "sentence"},
                 "validation": {"path": str(SST2 / "dev.tsv"), "text_column": "content"},
                 "max_train_samples": 256 if reduced else 4000, "max_eval_samples": 64 if reduced else 500},
        "params": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
        "fixed": {"batch_size": 32, "epochs": 2}})
    prepared = recipe.prepare(space, "auto")
    if prepared.device.type == "cuda":
        torch.cuda.synchronize()
    baseline = gpu_mb()[0]
    after: list[float] = []
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    for _ in range(3 if reduced else 10):
        study.optimize(Objective(space, prepared), n_trials=1)
        after.append(round(gpu_mb()[0] - baseline, 1))
    states = [t.state.name for t in study.trials]
    # What stays after the first trial is the cuBLAS workspaces PyTorch's allocator holds (32 MiB per handle and
    # stream on Hopper: the forward's and the backward thread's), allocated once per process: the check is that
    # nothing grows from trial to trial.
    return {"device": str(prepared.device), "baseline_mb": round(baseline, 1), "after_each_trial_mb": after,
            "states": states, "growth_after_first_mb": round(max(after) - after[0], 1),
            "ok": max(after) - after[0] <= 1.0 and all(s == "PRUNED" for s in states)}


def eval_peak_128k(work: Path, reduced: bool) -> dict:
    import torch

    from hpsearch.finetune import evaluation as E
    from hpsearch.finetune import model as M
    from hpsearch.finetune import recipe

    hidden = 32 if reduced else 4096
    model = save_llama(work / "llama-128k", layers=2, hidden=hidden, vocab=128256, inter=2 * hidden,
                       heads=4 if reduced else 32, kv=2 if reduced else 8)
    rows = text_rows(work / "long.jsonl", 16, 1100)
    space = space_for({"study": {"name": "eval", "pruner": "none"},
                       "model": {"name_or_path": str(model), "max_length": 1024, "precision": "auto"},
                       "data": {"task": "causal_lm", "text_column": "text", "train": {"path": str(rows)},
                                "validation": {"path": str(rows)}},
                       "params": {}, "fixed": {"dropout": 0.0}})
    prepared = recipe.prepare(space, "auto")
    built = M.build_model(space.model, space.hyperparameters(), prepared.data, prepared.device,
                          prepared.precision)
    reset_peak()
    before = gpu_mb()[0]
    t0 = time.perf_counter()
    metrics = E.evaluate(built, prepared.data.validation, prepared.data, prepared.device,
                            dtype=prepared.precision.autocast)
    seconds = time.perf_counter() - t0
    peak = gpu_mb()[1]
    logits_gb = 16 * 1024 * 128256 * 4 / 1e9
    del built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"rows": len(prepared.data.validation), "tokens": int(prepared.data.validation.lengths.sum()),
            "precision": prepared.precision.name, "eval_s": round(seconds, 2),
            "peak_above_model_mb": round(peak - before, 1), "full_fp32_logits_gb": round(logits_gb, 1),
            "eval_loss": round(metrics["eval_loss"], 4)}


def lora_7b_slices(work: Path, reduced: bool) -> dict:
    import importlib.util

    import torch

    from hpsearch.finetune import loop, recipe
    from hpsearch.finetune import model as M
    from hpsearch.finetune import state as S

    hidden, inter, heads, kv, seq = (64, 128, 4, 4, 64) if reduced else (4096, 11008, 32, 32, 1024)
    layers = (1, 2) if reduced else (2, 4)
    rows = text_rows(work / "lora.jsonl", 8, seq + 50)
    variants = {"bf16": {}, "bf16 + checkpointing": {"gradient_checkpointing": True}}
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        variants["4-bit + checkpointing"] = {"gradient_checkpointing": True, "quantization": "4bit"}
    out: dict[str, Any] = {"layers": list(layers), "hidden": hidden, "tokens_per_batch": 4 * seq}
    for n in layers:
        path = save_llama(work / f"llama-{n}", layers=n, hidden=hidden, vocab=32000, inter=inter, heads=heads, kv=kv)
        for name, extra in variants.items():
            space = space_for({"study": {"name": "lora", "pruner": "none"},
                               "model": {"name_or_path": str(path), "max_length": seq, "precision": "bf16"
                                         if torch.cuda.is_available() else "fp32", **extra},
                               "data": {"task": "causal_lm", "text_column": "text", "train": {"path": str(rows)},
                                        "validation": {"path": str(rows)}, "max_eval_samples": 4},
                               "params": {}, "fixed": {"lora_r": 16, "lora_alpha": 32, "batch_size": 4, "epochs": 1,
                                                       "learning_rate": 1e-4, "dropout": 0.0}})
            prepared = recipe.prepare(space, "auto")
            reset_peak()
            t0 = time.perf_counter()
            built = M.build_model(space.model, space.hyperparameters(), prepared.data, prepared.device,
                                  prepared.precision)
            setup = time.perf_counter() - t0
            result = loop.train(built, prepared.data, space.hyperparameters(),
                                S.TrainSettings.from_space(space, prepared.precision), device=prepared.device)
            out[f"{name}, {n} layers"] = {"setup_s": round(setup, 2), "peak_mb": round(gpu_mb()[1], 1),
                                          "steps": result.steps, "train_s": round(result.train_time_s, 2)}
            del built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for name in variants:
        a, b = (out[f"{name}, {n} layers"]["peak_mb"] for n in layers)
        per_layer = (b - a) / (layers[1] - layers[0])
        out[f"{name}: scaled to 32 layers, GB"] = round((a + per_layer * (32 - layers[0])) / 1024, 1)
    return out


VARIANTS = (("auto", False), ("fp32", False), ("bf16", False), ("bf16-true", False), ("auto", True),
            ("fp32", True), ("bf16-true", True))
"""(model.precision, model.cuda_graphs) of a MiniLM trial: what auto picks on this GPU, each precision by name,
and CUDA graphs on the ones a launch-bound step would take (fp16's loss scaler turns graphs off)."""
ANCHOR_CONFIG = {"learning_rate": 2e-4, "per_device_train_batch_size": 16, "num_train_epochs": 1,
                 "weight_decay": 0.0, "lr_scheduler_type": "cosine", "dropout": 0.1, "num_frozen_layers": 0}
"""configs_small.json's batch-16 config, as the anchor trains it (ops_per_step.py counts this step)."""


def minilm_trials(work: Path, reduced: bool, anchor: str) -> dict:
    """The decisive figures of issue #35: a MiniLM trial (SST-2, 2,000 rows, batch 16, one epoch) in each precision,
    with and without CUDA graphs, each after a warm-up trial in the same process, against the Trainer anchor's warm
    trial (its second of two identical trials in one process); and, per variant, the first and a second evaluation
    of the same validation batches (equal when no per-shape plan is built: cuDNN attention is off)."""
    import torch

    from hpsearch.finetune import recipe
    from hpsearch.finetune.evaluation import evaluate

    model = save_bert(work / "minilm-trials", reduced)
    rows, val = (128, 64) if reduced else (2000, 500)
    out: dict[str, Any] = {"trainer": _warm_anchor_trial(work, model, anchor, rows, val, reduced)}
    for precision, graphs in VARIANTS:
        name = f"{precision}{' + graphs' if graphs else ''}"
        space = space_for({
            "study": {"name": "trials", "metric": "accuracy", "pruner": "none"},
            "model": {"name_or_path": str(model), "max_length": 64, "precision": precision, "cuda_graphs": graphs},
            "data": {"task": "classification", "label_column": "label",
                     "train": {"path": str(SST2 / "train.tsv"), "text_column": "sentence"},
                     "validation": {"path": str(SST2 / "dev.tsv"), "text_column": "content"},
                     "max_train_samples": rows, "max_eval_samples": val},
            "params": {}, "fixed": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-4, "scheduler": "cosine",
                                    "dropout": 0.1, "seed": 0}})
        try:
            prepared = recipe.prepare(space, "auto")
        except Exception as exc:  # bf16 where it is not native is refused: say so and go on
            out[name] = {"refused": str(exc)[:200]}
            continue
        figures = {"plan": prepared.precision.name, "reason": prepared.precision.reason}
        for which in ("first", "warm"):
            t0 = time.perf_counter()
            built, result = recipe.fine_tune(space, space.hyperparameters(), prepared)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            figures[f"{which}_trial_s"] = round(time.perf_counter() - t0, 3)
            figures[f"{which}_ms_per_step"] = round(1000 * result.train_time_s / result.steps, 2)
        figures["accuracy"] = round(result.metrics["accuracy"], 4)
        figures["cuda_graphs"] = result.cuda_graphs or "not asked"  # a silent fallback must not read as "no gain"
        evals = []
        for _ in range(2):  # the same batches twice: a per-shape plan would make the first slower
            t0 = time.perf_counter()
            evaluate(built, prepared.data.validation, prepared.data, prepared.device, dtype=prepared.precision.autocast)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            evals.append(round(time.perf_counter() - t0, 3))
        figures["eval_s_first_second"] = evals
        trainer = out["trainer"].get("warm_trial_s")
        if trainer:
            figures["ratio_to_trainer"] = round(figures["warm_trial_s"] / trainer, 3)
        out[name] = figures
        del built
    return out


def _warm_anchor_trial(work: Path, model: Path, anchor: str, rows: int, val: int, reduced: bool) -> dict:
    """The Trainer anchor's trial time, warm: the second of two identical trials in one process."""
    if reduced:
        return {"skipped": "reduced mode"}
    if not Path(anchor).is_file():
        return {"skipped": f"no anchor script at {anchor} (copy ../shared/bench/trainer_baseline.py into .gpu/)"}
    configs, result = work / "anchor_configs.json", work / "anchor.json"
    configs.write_text(json.dumps([ANCHOR_CONFIG, ANCHOR_CONFIG]))
    subprocess.run([sys.executable, anchor, "--train", str(SST2 / "train.tsv"), "--eval", str(SST2 / "dev.tsv"),
                    "--model", str(model), "--n-train", str(rows), "--n-eval", str(val), "--configs", str(configs),
                    "--out", str(result), "--max-length", "64"], cwd=REPO, check=True, timeout=300)
    raw = json.loads(result.read_text())
    return {"first_trial_s": round(raw["durations_s"][0], 3), "warm_trial_s": round(raw["durations_s"][1], 3),
            "accuracy": raw["values"][1]}


def minilm_against_trainer(work: Path, reduced: bool, anchor: str) -> dict:
    if reduced:
        return {"skipped": "reduced mode (tests/test_bench.py runs bench.run's hpsearch side on the CPU)"}
    if not Path(anchor).is_file():
        return {"skipped": f"no anchor script at {anchor} (copy ../shared/bench/trainer_baseline.py into .gpu/)"}
    model = save_bert(work / "minilm-run", reduced=False)
    out = work / "run.md"
    cmd = [sys.executable, "-m", "bench.run", "--kinds", "hpsearch-as-run,default", "--rounds", "1",
           "--configs", str(CONFIGS / "configs_other.json"), "--anchor", anchor, "--model", str(model),
           "--train", str(SST2 / "train.tsv"), "--eval", str(SST2 / "dev.tsv"), "--out", str(out),
           "--json", str(work / "run.json")]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=420)
    text = out.read_text()
    return {"ratios": [ln for ln in text.splitlines() if ln.startswith("- **")],
            "raw": json.loads((work / "run.json").read_text())}


SECTIONS: dict[str, tuple[str, Callable[..., dict]]] = {
    "precisions": ("a MiniLM trial in each precision, with and without CUDA graphs, against Trainer (warm)",
                   lambda work, reduced, anchor: minilm_trials(work, reduced, anchor)),
    "memory": ("memory given back after pruned trials", lambda work, reduced, anchor:
               memory_after_pruned_trials(work, reduced)),
    "vocab128k": ("evaluation of a 128k-vocabulary decoder at 1,024 tokens", lambda work, reduced, anchor:
                  eval_peak_128k(work, reduced)),
    "lora7b": ("a 7B LoRA trial, from Llama-7B-shaped slices", lambda work, reduced, anchor:
               lora_7b_slices(work, reduced)),
    "against_trainer": ("a MiniLM trial against Trainer", lambda work, reduced, anchor:
                        minilm_against_trainer(work, reduced, anchor)),
}
"""Each section by the name ``--only`` takes: its title, and what it runs."""


def run_section(name: str, reduced: bool, anchor: str) -> dict:
    """One section, in this process (``--only NAME``: each in a process of its own, so that a CUDA state one
    section breaks cannot spread to the next)."""
    with tempfile.TemporaryDirectory(prefix="hpsearch-gpu-") as tmp:
        t0 = time.perf_counter()
        try:
            body = SECTIONS[name][1](Path(tmp), reduced, anchor)
        except Exception as exc:  # report and go on: the first GPU run should bring back all it can
            body = {"failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        body["seconds"] = round(time.perf_counter() - t0, 1)
    return body


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="toy sizes, on whatever device there is (a test's run)")
    ap.add_argument("--anchor", default=str(REPO / ".gpu" / "trainer_baseline.py"))
    ap.add_argument("--out", default=str(RESULTS / "GPU.md"))
    ap.add_argument("--json", default=None, help="raw results (default: bench/results/raw/gpu.json, or beside --out)")
    ap.add_argument("--list", action="store_true", help="name the sections and exit")
    ap.add_argument("--only", default=None, help="the sections to run, comma-separated (default: all)")
    a = ap.parse_args(argv)
    if a.list:
        for name, (title, _) in SECTIONS.items():
            print(f"{name}: {title}")
        return
    names = a.only.split(",") if a.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"--only {a.only}: no section {', '.join(unknown)}; bench.gpu --list names them")
    out = Path(a.out)
    raw = Path(a.json) if a.json else raw_path(out, "gpu.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"date": now(), "machine": machine(), "reduced": a.reduced}
    for name in names:
        title = SECTIONS[name][0]
        if len(names) == 1:
            results[title] = run_section(name, a.reduced, a.anchor)
        else:  # each in a process of its own
            part = raw.with_name(f"{raw.stem}.{name}.json")
            cmd = [sys.executable, "-m", "bench.gpu", "--only", name, "--anchor", a.anchor, "--json", str(part),
                   "--out", str(part.with_suffix(".md")), *(["--reduced"] if a.reduced else [])]
            done = subprocess.run(cmd, cwd=REPO)
            results[title] = (json.loads(part.read_text()).get(title, {}) if part.is_file() else
                              {"failed": f"the section's process exited {done.returncode}"})
        print(f"[gpu] {title}: {json.dumps(results[title])[:400]}", file=sys.stderr, flush=True)
        raw.write_text(json.dumps(results, indent=1))  # after each section: a run cut short keeps what it did
    lines = [f"# GPU measurements{' (reduced, toy sizes)' if a.reduced else ''}", "",
             f"- date: {results['date']}", f"- machine: {results['machine']}",
             f"- command: `python -m bench.gpu {' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"- raw: `{raw.name}`", ""]
    for title, body in results.items():
        if isinstance(body, dict):
            lines += [f"## {title}", "", "```json", json.dumps({k: v for k, v in body.items() if k != "traceback"},
                                                                indent=1)[:4000], "```", ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    print(out.read_text())


if __name__ == "__main__":
    main()

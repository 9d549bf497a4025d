"""Fused trials (``--fuse K``): trials per hour and the best found for K = 1, 2, 4, 8, 16, and a LoRA decoder's
memory per member.

    python -m bench.fused --out bench/results/FUSED.md          # CPU: tiny BERT K = 1..16, MiniLM K = 1, 8; memory
    python -m bench.fused --reduced --out /tmp/fused.md         # toy sizes (a test's run)
    python -m bench.fused --models random-minilm --ks 1,2,4,8,16  # on a GPU: bench/packing.py's MiniLM and configs

Every K runs the same configs (bench/packing.py's grid of 16: learning rate x batch size x dropout; one epoch, no
pruning, seed 42) as one fresh study: K = 1 is ``hpsearch run`` one trial at a time, K > 1 ``hpsearch run --fuse
K``. Rates as bench/packing.py gives them: over the whole command (start-up included) and in steady state (first
trial's start to last trial's end). Fusing must not change what the search finds: each config's value against K = 1
(members with dropout 0 train as alone to rounding; with dropout their masks are the pass's, so their values move as
another seed would move them), and the best config of each K.

Models: ``tiny`` (BERT, hidden 32, 2 layers, random weights: dispatch-bound, as a small model is on a GPU),
``minilm`` (all-MiniLM-L6-v2's real weights, ``make models``: compute-bound on a CPU), ``random-minilm`` (its shape
with random weights, for GPU machines that cannot download). Memory: a Llama-shaped decoder fine-tuned with LoRA
(r 8 on q and v), one trial alone against K members fused, each process's peak (RSS on a CPU, with glibc's malloc
arenas capped at 2 so that threads do not each keep their own; allocated memory on a GPU) above what a prepared
worker holds before its first trial (imports, data, the pretrained weights).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS, machine, now, raw_path, write_result
from bench.gpu import save_bert, save_llama
from bench.packing import grid_size, rate_cells, run_study, space

MINILM = REPO / "models" / "all-MiniLM-L6-v2"
LLAMA = {"layers": 8, "hidden": 1024, "vocab": 8192, "inter": 2752, "heads": 16, "kv": 4}
"""The memory run's decoder, 100M parameters, trained on 2 x ~30 tokens a step: the base a LoRA member does not
train outweighs a member's activations, as a 7B model's 14 GB outweigh its members' (the regime the fused base is
for; with more tokens a step, activations grow with K as they would in K processes)."""
LLAMA_REDUCED = {"layers": 2, "hidden": 64, "vocab": 4500, "inter": 128, "heads": 4, "kv": 2}


def run_k(k: int, space_file: Path, trials: int, work: Path, label: str) -> dict[str, Any]:
    """One study of ``trials`` trials, fused K at a time (K = 1: one at a time, no --fuse); its rates and values."""
    return run_study(k, f"fused-{label}-k{k}", space_file, trials, work, ["--fuse", str(k)] if k > 1 else [])


def throughput(label: str, model: Path, ks: list[int], reduced: bool, work: Path, rows: int | None) -> dict:
    """Every K of ``ks`` on the same configs with ``model``."""
    from hpsearch.config.validation import validate
    from hpsearch.finetune.recipe import tokenize

    raw = space(model, reduced)
    if rows:
        raw["data"]["max_train_samples"] = rows
    space_file = work / f"{label}.yaml"
    space_file.write_text(json.dumps(raw))  # JSON is YAML
    tokenize(validate(raw))  # the data cache every K starts from
    out: dict[str, Any] = {"model": label, "configs": grid_size(raw), "train_rows": raw["data"]["max_train_samples"],
                           "runs": []}
    for k in ks:
        try:
            row = run_k(k, space_file, out["configs"], work, label)
        except Exception as exc:  # report and go on: a GPU run should bring back all it can
            row = {"k": k, "failed": f"{type(exc).__name__}: {exc}"}
        out["runs"].append(row)
        print(f"[fused] {label} {json.dumps({k: v for k, v in row.items() if k != 'values'})}", file=sys.stderr,
              flush=True)
    return out


MEMORY_CHILD = """
import json, resource, sys, threading
import torch
from hpsearch.config.validation import validate
from hpsearch.finetune.device import peak_memory_mb
from hpsearch.finetune.recipe import fine_tune, fuser_for, prepare
from hpsearch.config.vocabulary import Hyperparameters

raw, k = json.loads(sys.argv[1]), int(sys.argv[2])
space = validate(raw)
prepared = prepare(space)
if prepared.device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before = peak_memory_mb(prepared.device)
hps = [Hyperparameters.of({**space.fixed, "learning_rate": 1e-3 * (1 + i), "seed": i}) for i in range(k)]
fuser = fuser_for(space, prepared, k) if k > 1 else None
threads = [threading.Thread(target=fine_tune, args=(space, hp, prepared), kwargs={"fuser": fuser}) for hp in hps]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"k": k, "before_mb": before, "peak_mb": peak_memory_mb(prepared.device),
                  "device": str(prepared.device)}))
"""


def lora_memory(work: Path, reduced: bool, ks: list[int]) -> dict:
    """Peak memory of K LoRA members of a Llama-shaped decoder, each K in a fresh process."""
    from bench.gpu import text_rows

    shape = LLAMA_REDUCED if reduced else LLAMA
    model = save_llama(work / "llama", **shape)
    train = text_rows(work / "sft.jsonl", 64, 24)
    raw = {"study": {"name": "memory", "pruner": "none", "reports_per_epoch": 1},
           "model": {"name_or_path": str(model), "max_length": 64},
           "data": {"task": "causal_lm", "text_column": "text", "train": {"path": str(train)},
                    "validation": {"path": str(train)}, "max_eval_samples": 16},
           "params": {}, "fixed": {"epochs": 1, "batch_size": 2, "lora_r": 8, "lora_alpha": 16, "dropout": 0.0,
                                   "lora_target_modules": "q_proj,v_proj"}}
    params = sum(v.numel() for v in _load_weights(model).values())
    out: dict[str, Any] = {"model": f"Llama-shaped, {params / 1e6:.0f}M parameters ({json.dumps(shape)})",
                           "runs": []}
    for k in ks:
        done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(raw), str(k)], cwd=REPO,
                              capture_output=True, text=True, timeout=1800, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
        if done.returncode:
            out["runs"].append({"k": k, "failed": done.stderr[-1500:]})
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["trials_mb"] = round(row["peak_mb"] - row["before_mb"], 1)
        out["runs"].append(row)
        print(f"[fused] memory {json.dumps(row)}", file=sys.stderr, flush=True)
    return out


LAUNCH_CHILD = """
import json, sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
from hpsearch.config.validation import validate
from hpsearch.config.vocabulary import Hyperparameters
from hpsearch.finetune.fused import PassCost, _Request
from hpsearch.finetune.model import build_model
from hpsearch.finetune.optim import make_optimizer
from hpsearch.finetune.precision import FP32, TF32_FLOPS
from hpsearch.finetune.recipe import Prepared, fuser_for, prepare, workload

class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.__name__.split(".")[0] not in (
                "detach", "alias", "lift_fresh", "_record_function_enter_new", "_record_function_exit"):
            self.n += 1
        return func(*args, **(kwargs or {}))

raw, ks, rows, width = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
space = validate(raw)
prepared = prepare(space, "cpu")
prepared = Prepared(prepared.device, prepared.data, FP32)  # what auto picks for these models on an H100/H200
task = prepared.data.task
torch.manual_seed(0)
vocab = int(prepared.data.train.input_ids.max()) + 1
inputs = {"input_ids": torch.randint(5, vocab, (rows, width)),
          "attention_mask": torch.ones(rows, width, dtype=torch.bool),
          "token_type_ids": torch.zeros(rows, width, dtype=torch.long)}
labels = torch.randint(0, 2, (rows,))
out = {}
for k in ks:
    hps = [Hyperparameters.of({**space.fixed, "learning_rate": 1e-4 * (i + 1), "dropout": 0.0, "seed": i})
           for i in range(k)]
    models = [build_model(space.model, hp, prepared.data, prepared.device, prepared.precision) for hp in hps]
    optimizers = [make_optimizer(m, hp, prepared.device) for m, hp in zip(models, hps)]
    fuser = fuser_for(space, prepared, k) if k > 1 else None
    if fuser is not None:  # passes planned as on an H100/H200 (sm90), the GPU these counts stand for
        load = workload(space, prepared.data)
        fuser.cost = PassCost(fixed_s=load.launch_s(), token_s=load.token_s(TF32_FLOPS[9]))
        fuser._calibrate = lambda *timed: None
    members = [fuser.join(m.train(), 0.0) for m in models] if fuser else []

    def step():
        if fuser is None:
            loss = task.loss(task.forward(models[0].train(), inputs, labels), labels)
            loss.backward()
        else:
            fuser._run([_Request(m, inputs, labels, 1.0, None, False) for m in members])
        for m, o in zip(models, optimizers):
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0, foreach=True)
            o.step(); o.zero_grad(set_to_none=True)

    step()
    with Count() as c:
        step()
    out[k] = c.n
print(json.dumps(out))
"""


def launches(label: str, model: Path, ks: list[int], rows: int = 16, width: int = 64) -> dict:
    """ATen ops that would launch a kernel on a GPU (views left out) in one optimizer step of K members (one fused
    pass, then each member's clipping and AdamW), per member, counted on the CPU in fp32: in the launch-bound regime
    of a small model on a GPU a step's time follows its launches (../shared/bench/ops_per_step.py holds the counts
    against an H200 profile)."""
    raw = space(model, False)
    done = subprocess.run([sys.executable, "-c", LAUNCH_CHILD, json.dumps(raw), json.dumps(ks), str(rows),
                           str(width)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        return {"model": label, "failed": done.stderr[-1500:]}
    counts = {int(k): n for k, n in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    out = {"model": label, "rows": rows, "width": width, "counts": counts}
    print(f"[fused] launches {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def _load_weights(model: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model / "model.safetensors")


def report(results: dict[str, Any], argv: list[str]) -> str:
    reduced = " (reduced, toy sizes)" if results["reduced"] else ""
    lines = [f"# Fused trials{reduced}", "", f"- date: {results['date']}", f"- machine: {results['machine']}",
             f"- command: `python -m bench.fused {' '.join(argv)}`", f"- raw: `{results['raw']}`",
             "- each K: a fresh study of the same configs (bench/packing.py's grid: learning rate x batch size x "
             "dropout, one epoch, no pruning, seed 42); K = 1 one trial at a time, K > 1 `hpsearch run --fuse K`; "
             "wall = the whole command; steady = first trial's start to last trial's end", ""]
    for part in results["throughput"]:
        runs = part["runs"]
        base = next((r for r in runs if r.get("k") == 1 and "failed" not in r), None)
        lines += [f"## {part['model']}: {part['configs']} configs, {part['train_rows']} training rows", "",
                  "| K | trials | wall s | trials/h (wall) | x K=1 | trials/h (steady) | x K=1 | mean trial s | "
                  "best value | best config | largest value change against K=1 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            if "failed" in r:
                lines.append(f"| {r['k']} | failed: {r['failed'][:300]} |" + " |" * 9)
                continue
            change = max((abs(v - base["values"].get(c, v)) for c, v in r["values"].items()), default=0.0) \
                if base else 0.0
            params = ", ".join(f"{k}={v:g}" for k, v in sorted(r["best_params"].items()))
            lines.append(f"{rate_cells(r, base)} {r['best_value']} | {params} | {change:.4f} |")
        lines.append("")
    for part in results.get("launches", []):
        if "failed" in part:
            lines += [f"## Launches per member-step: {part['model']}: failed", "", part["failed"][-500:], ""]
            continue
        one = part["counts"][1] if 1 in part["counts"] else part["counts"].get("1")
        lines += [f"## Launches per member-step: {part['model']} ({part['rows']} rows x {part['width']} tokens, fp32)",
                  "", "Kernels one optimizer step would launch on a GPU (ATen ops but views), counted on the CPU: "
                  "K members' fused pass, then each member's clipping and AdamW; per member.", "",
                  "| K | ops a step | per member | x K=1 |", "|---|---|---|---|"]
        for k, n in sorted((int(k), n) for k, n in part["counts"].items()):
            lines.append(f"| {k} | {n} | {n / k:.0f} | {n / k / one:.2f} |")
        lines.append("")
    memory = results.get("memory")
    if memory:
        base = next((r for r in memory["runs"] if r.get("k") == 1 and "failed" not in r), None)
        lines += [f"## LoRA members' memory: {memory['model']}", "",
                  "Peak memory of the process above a prepared worker's (imports, data, pretrained weights), K "
                  "members training at once (K = 1: one trial, no fusing).", "",
                  "| K | device | before MB | peak MB | trials' MB | x K=1 |", "|---|---|---|---|---|---|"]
        for r in memory["runs"]:
            if "failed" in r:
                lines.append(f"| {r['k']} | failed: {r['failed'][-300:]} | | | | |")
                continue
            x = f"{r['trials_mb'] / base['trials_mb']:.2f}" if base and base["trials_mb"] > 0 else "-"
            lines.append(f"| {r['k']} | {r['device']} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | "
                         f"{r['trials_mb']:.0f} | {x} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="toy sizes: tiny BERT, K = 1, 2, 4 configs (a test)")
    ap.add_argument("--models", default=None, help="comma-separated: tiny, minilm, random-minilm (default: tiny and "
                                                   "minilm on a CPU, random-minilm on a GPU, tiny when reduced)")
    ap.add_argument("--ks", default=None, help="the Ks (default 1,2,4,8,16; minilm on a CPU 1,8; reduced 1,2)")
    ap.add_argument("--rows", type=int, default=None, help="training rows (default: bench/packing.py's)")
    ap.add_argument("--memory-ks", default="1,8", help="the Ks of the LoRA memory run ('' to skip it)")
    ap.add_argument("--launch-ks", default="1,2,4,8,16", help="the Ks of the launch count ('' to skip it)")
    ap.add_argument("--out", default=str(RESULTS / "FUSED.md"))
    a = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    models = a.models.split(",") if a.models else ["tiny"] if a.reduced else ["random-minilm"] if gpu \
        else ["tiny", "minilm"]
    out = Path(a.out)
    raw_file = raw_path(out, "fused.json")
    results: dict[str, Any] = {"date": now(), "machine": machine(), "gpu": gpu, "reduced": a.reduced,
                               "raw": raw_file.name, "throughput": []}
    with tempfile.TemporaryDirectory(prefix="hpsearch-fused-") as tmp:
        work = Path(tmp)
        os.environ["HPSEARCH_CACHE_DIR"] = str(work / "cache")
        for label in models:
            if a.ks:
                ks = [int(k) for k in a.ks.split(",")]
            else:
                ks = [1, 2] if a.reduced else [1, 8] if label == "minilm" and not gpu else [1, 2, 4, 8, 16]
            model = {"tiny": lambda: save_bert(work / "tiny", True), "minilm": lambda: MINILM,
                     "random-minilm": lambda: save_bert(work / "random-minilm", False)}[label]()
            results["throughput"].append(throughput(label, model, ks, a.reduced, work, a.rows))
        if a.launch_ks:
            ks = [int(k) for k in a.launch_ks.split(",")]
            results["launches"] = [launches("tiny", save_bert(work / "tiny-count", True), ks)]
            if not a.reduced:
                results["launches"].append(launches("MiniLM-shaped", save_bert(work / "minilm-count", False), ks))
        if a.memory_ks:
            results["memory"] = lora_memory(work, a.reduced, [int(k) for k in a.memory_ks.split(",")])
    write_result(out, report(results, argv).splitlines(), results, raw_file.name)


if __name__ == "__main__":
    main()

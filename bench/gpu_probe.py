"""What a lent GPU is, and whether what the CPU tests assume of it holds (#42), in about 90 s.

    python -m bench.gpu_probe --out bench/results/raw/gpu_probe.json    # on a GPU (bench/gpu_run.sh runs it first)

On a machine without CUDA it says so and exits 0. On a GPU, each part on its own (one that fails is reported as
failed and the others still run):

- **versions**: torch, CUDA, cuDNN, transformers, the GPU and its compute capability;
- **attention**: the SDPA kernel torch picks for fp32 and bf16, with a padding mask and with dropout;
- **learning rate**: the capturable AdamW's learning rate stays one device tensor across the schedule's steps (what a
  CUDA graph reads);
- **a failed capture** (in a process of its own): a captured step that reads the device fails; afterwards the thread
  is on its own stream, dropout runs, and later trials of the process step eagerly
  (:mod:`hpsearch.finetune.graphs`);
- **a MiniLM step's launches**: kernels and synchronizations per training step from the profiler, eager and with
  CUDA graphs (whether they were on), against the CPU counts (298 kernels, 0 syncs: bench/results/COUNTS.md).
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

from bench.common import REPO, now

CPU_KERNELS, CPU_SYNCS = 298, 0
"""A MiniLM fp32 step counted on the CPU (``../shared/bench/ops_per_step.py``, bench/results/COUNTS.md)."""


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0),
            "capability": list(torch.cuda.get_device_capability(0))}


def attention() -> dict:
    """The fused SDPA backend torch chooses for each case (flash, efficient, cuDNN, math)."""
    import torch

    names = {int(b): b.name for b in torch.nn.attention.SDPBackend} if hasattr(torch.nn.attention, "SDPBackend") \
        else {}
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        q = k = v = torch.randn(16, 12, 64, 32, device="cuda", dtype=dtype)
        pad = torch.zeros(16, 1, 64, 64, device="cuda", dtype=dtype)
        pad[:, :, :, 48:] = torch.finfo(dtype).min
        for label, mask, p in (("plain", None, 0.0), ("padding mask", pad, 0.0), ("dropout 0.1", None, 0.1),
                               ("padding mask + dropout", pad, 0.1)):
            choice = torch._fused_sdp_choice(q, k, v, mask, p, False)
            out[f"{str(dtype).split('.')[-1]}, {label}"] = names.get(int(choice), str(choice))
    return out


def learning_rate() -> dict:
    """The capturable optimizer's learning rate across schedule steps: one device tensor, filled in place."""
    import torch

    from hpsearch.config.vocabulary import Hyperparameters
    from hpsearch.finetune.optim import make_optimizer, make_scheduler

    model = torch.nn.Linear(8, 8).cuda()
    hp = Hyperparameters().replace(learning_rate=1e-3, scheduler="linear", warmup_ratio=0.1)
    optimizer = make_optimizer(model, hp, torch.device("cuda"), capturable=True)
    scheduler = make_scheduler(optimizer, hp, 100)
    lr = optimizer.param_groups[0]["lr"]
    seen = []
    for _ in range(5):
        model(torch.randn(4, 8, device="cuda")).sum().backward()
        optimizer.step()
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"] is lr)
    return {"a device tensor": torch.is_tensor(lr) and lr.is_cuda, "the same tensor each step": all(seen),
            "value after 5 steps": float(lr)}


FAILED_CAPTURE = """
import json, torch
from hpsearch.finetune import graphs as G
w = torch.nn.Parameter(torch.ones(64, device="cuda"))
opt = torch.optim.AdamW([w], lr=torch.tensor(1e-3, device="cuda"), fused=True, capturable=True)
def forward_loss(inputs, labels):
    x = inputs["x"] * w
    if bool((x > 1e9).any()):  # a read of the device: no capture allows it
        x = x * 2
    return x.sum()
steps = G.StepGraphs(lambda b: [({"x": b}, torch.zeros(1, device="cuda"), 1.0)], forward_loss, opt, [w], 1.0,
                     torch.zeros((), device="cuda"), capture=True)
x = torch.randn(64, device="cuda")
for _ in range(3):
    steps.step(x)
torch.cuda.synchronize()
y = torch.nn.functional.dropout(torch.ones(1024, device="cuda"), 0.5, True)  # the generator is usable
later = G.StepGraphs(lambda b: [({"x": b}, torch.zeros(1, device="cuda"), 1.0)], forward_loss, opt, [w], 1.0,
                     torch.zeros((), device="cuda"), capture=True)
print(json.dumps({"off": steps.off, "on its own stream": torch.cuda.current_stream() == torch.cuda.default_stream(),
                  "dropout after it": float(y.mean()), "a later trial": later.off}))
"""


def failed_capture() -> dict:
    done = subprocess.run([sys.executable, "-c", FAILED_CAPTURE], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    if done.returncode:
        return {"failed": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def minilm_launches(steps: int = 20) -> dict:
    """Kernels and synchronizations per MiniLM training step from the profiler, eager and with CUDA graphs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.gpu import SST2, save_bert, space_for
    from hpsearch.finetune import loop, recipe

    out: dict[str, Any] = {"cpu_counts": {"kernels": CPU_KERNELS, "syncs": CPU_SYNCS}}
    with tempfile.TemporaryDirectory(prefix="hpsearch-probe-") as tmp:
        model = save_bert(Path(tmp) / "minilm", reduced=False)
        for graphs in (False, True):
            space = space_for({
                "study": {"name": "probe", "metric": "accuracy", "pruner": "none"},
                "model": {"name_or_path": str(model), "max_length": 64, "precision": "fp32", "cuda_graphs": graphs},
                "data": {"task": "classification", "label_column": "label",
                         "train": {"path": str(SST2 / "train.tsv"), "text_column": "sentence"},
                         "validation": {"path": str(SST2 / "dev.tsv"), "text_column": "content"},
                         "max_train_samples": 16 * (steps + 40), "max_eval_samples": 32},
                "params": {}, "fixed": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-4, "dropout": 0.1}})
            prepared = recipe.prepare(space, "cuda")
            counted: list[tuple[int, int]] = []
            real_step = loop._step

            def step(run: Any, batch: Any) -> None:
                if not (40 <= run.state.step < 40 + steps):  # after the warm-up (and the captures)
                    return real_step(run, batch)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    real_step(run, batch)
                    torch.cuda.synchronize()
                events = prof.events()
                kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
                syncs = sum(1 for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                            "cudaMemcpy", "cudaEventSynchronize")) - 1
                counted.append((kernels, max(0, syncs)))

            loop._step = step
            try:
                _, result = recipe.fine_tune(space, space.hyperparameters(), prepared)
            finally:
                loop._step = real_step
            kernels = sorted(k for k, _ in counted)
            out["graphs" if graphs else "eager"] = {
                "kernels_per_step_median": kernels[len(kernels) // 2] if kernels else None,
                "syncs_per_step_max": max((s for _, s in counted), default=None), "steps_profiled": len(counted),
                "cuda_graphs": result.cuda_graphs or "not asked"}
    eager = out["eager"]["kernels_per_step_median"]
    if eager:
        out["eager_against_cpu_count"] = round(eager / CPU_KERNELS, 3)
    return out


PARTS: dict[str, Callable[[], dict]] = {"versions": versions, "attention": attention,
                                        "learning rate": learning_rate, "a failed capture": failed_capture,
                                        "a MiniLM step's launches": minilm_launches}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="a JSON file for the results (also printed)")
    a = ap.parse_args(argv)
    import torch

    results: dict[str, Any] = {"date": now()}
    if not torch.cuda.is_available():
        results["cuda"] = f"not available (torch {torch.__version__}): nothing to probe"
        print(json.dumps(results))
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=1))
        return
    for name, part in PARTS.items():
        t0 = time.perf_counter()
        try:
            results[name] = part()
        except Exception as exc:  # noqa: BLE001 - report and go on: a lent GPU's minutes are few
            results[name] = {"failed": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[probe] {name}: {json.dumps(results[name])[:600]}", file=sys.stderr, flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

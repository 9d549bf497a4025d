"""Per-step cost of the CPU step levers: ms per training step over one epoch, with each lever off and on.

    python -m bench.levers [--space search_spaces/lr_dropout.yaml] [--reps 3] [--batch-sizes 16,32] [--profile]

Variants, alternating within every repetition: ``base`` (full embedding table, ``nn.Dropout``), ``vocab`` (only
the data's embedding rows, hpsearch/finetune/vocab.py), ``dropout`` (cheaper masks, hpsearch/finetune/dropout.py),
``both`` (what ``hpsearch.finetune.loop.train`` does on a CPU). The step is the training loop's: bf16 autocast where
the precision plan says so, fused AdamW, clipping at 1.0, length-grouped batches. ``--profile`` prints where a ``both``
step's time goes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import REPO, machine
from hpsearch.config.load import load_space
from hpsearch.finetune import batching as B
from hpsearch.finetune import model as M
from hpsearch.finetune import optim as O
from hpsearch.finetune.precision import precision_plan
from hpsearch.finetune.recipe import prepare
from hpsearch.finetune.vocab import shrink_vocabulary

VARIANTS = ("base", "vocab", "dropout", "both")


def one_epoch(space, data, batch_size: int, variant: str, profile: bool = False) -> float:
    """Build a fresh model with ``variant``'s levers and return its mean ms per step over one epoch."""
    device = torch.device("cpu")
    hp = {"learning_rate": 5e-5, "batch_size": batch_size, "epochs": 1, "weight_decay": 0.01, "scheduler": "linear",
          "dropout": 0.1, "num_frozen_layers": 0, "seed": 0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    installed = M.install_cheap_dropout
    if variant not in ("dropout", "both"):
        M.install_cheap_dropout = lambda model: False
    try:
        model = M.build_model(space.model, hp, data, device)
    finally:
        M.install_cheap_dropout = installed
    if variant in ("vocab", "both"):
        data = shrink_vocabulary(model, data).data
    optimizer = O.make_optimizer(model, hp, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    bf16 = precision_plan(space.model.precision, "auto", None, device).autocast is not None
    batches = B.length_grouped_batches(data.train.lengths, batch_size, torch.Generator().manual_seed(0))
    model.train()

    def step(idx: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**data.train.batch(idx, device)).logits
        torch.nn.functional.cross_entropy(logits.float(), data.train.labels_of(idx, device)).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if profile:
        from torch.profiler import profile as torch_profile

        for idx in batches[:5]:
            step(idx)
        with torch_profile() as prof:
            for idx in batches[5:25]:
                step(idx)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return 0.0
    start = time.perf_counter()
    for idx in batches:
        step(idx)
    return (time.perf_counter() - start) / len(batches) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default=str(REPO / "search_spaces/lr_dropout.yaml"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-sizes", default="16,32")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    space = load_space(a.space)
    data = prepare(space, "cpu").data
    print(f"machine: {machine()}")
    sizes = [int(b) for b in a.batch_sizes.split(",")]
    if a.profile:
        one_epoch(space, data, sizes[-1], "both", profile=True)
        return
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(a.reps):
        for bs in sizes:
            for variant in VARIANTS:
                times.setdefault((bs, variant), []).append(one_epoch(space, data, bs, variant))
    for (bs, variant), ms in times.items():
        base = statistics.median(times[(bs, "base")])
        print(f"batch {bs:3d} {variant:8s} {statistics.median(ms):6.1f} ms/step "
              f"({statistics.median(ms) / base - 1:+.0%} vs base)  runs: {', '.join(f'{m:.1f}' for m in ms)}")


if __name__ == "__main__":
    main()

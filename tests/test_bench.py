"""bench/ as the package leaves it: its scripts import what exists, its index names every result, a report
rewrites from its raw numbers, and the per-trial benchmark runs (a reduced run on the tiny model)."""
from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

BENCH = REPO / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_import_of_the_package_in_a_bench_script_resolves(script: Path) -> None:
    """The scripts import hpsearch inside functions too, where running them is the only other check."""
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("hpsearch", "bench"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{script.name}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("hpsearch", "bench"):
                    importlib.import_module(alias.name)


def test_the_index_names_every_script_and_result() -> None:
    index = (BENCH / "README.md").read_text(encoding="utf-8")
    for script in SCRIPTS:
        if script.stem != "common":
            assert f"`{script.stem}`" in index or f"`{script.stem}`," in index, script.name
    for result in (BENCH / "results").glob("*.md"):
        assert f"(results/{result.name})" in index, result.name
    pages = "".join(p.read_text(encoding="utf-8") for p in (BENCH / "results").glob("*.md"))
    for raw in (BENCH / "results" / "raw").glob("*.json"):
        assert raw.stem in index or raw.name in pages, f"{raw.name} is named nowhere"
    for figure in (BENCH / "results").glob("*.png"):
        assert f"({figure.name})" in pages, f"{figure.name} is shown by no result"


def test_a_search_report_rewrites_from_its_raw_numbers(tmp_path: Path) -> None:
    from bench import search

    out = search.rewrite_report(str(BENCH / "results" / "raw" / "search_trainval.json"), out=str(tmp_path / "r.md"),
                                plot=str(tmp_path / "r.html"))
    table = lambda text: [ln for ln in text.splitlines() if ln.startswith(("| ", "- **"))]  # noqa: E731
    assert table(out.read_text()) == table((BENCH / "results" / "SEARCH_trainval.md").read_text())


def test_the_per_trial_benchmark_runs_its_hpsearch_side(tiny_model: Path, tiny_data: dict, tmp_path: Path) -> None:
    """``python -m bench.run`` reduced to hpsearch's side on the tiny model: the driver, bench.hpsearch_trials and
    the report (the anchor side needs the shared folder's script and accelerate: the real run)."""
    import subprocess
    import sys

    configs = tmp_path / "configs.json"
    configs.write_text(json.dumps([{"learning_rate": 1e-3, "per_device_train_batch_size": 16, "num_train_epochs": 1,
                                    "weight_decay": 0.0, "lr_scheduler_type": "linear", "dropout": 0.1,
                                    "num_frozen_layers": 0}]))
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, "-m", "bench.run", "--kinds", "hpsearch-as-run", "--configs", str(configs),
           "--anchor", str(configs), "--train", str(tiny_data["train"]), "--eval", str(tiny_data["dev"]),
           "--model", str(tiny_model), "--n-train", "64", "--n-eval", "32", "--max-length", "32", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    text = out.read_text()
    assert re.search(r"- machine: .*cores \(flags .*\), (no GPU|GPU .*), torch", text)
    row = next(ln for ln in text.splitlines() if ln.startswith("| 0: "))
    seconds, accuracy = row.split(" | ")[1:3]
    assert float(seconds) > 0 and 0.0 <= float(accuracy) <= 1.0


def test_the_device_command_runs_every_section_in_its_cpu_mode(tmp_path: Path) -> None:
    """bench/gpu_run.sh, the one command a lent GPU gets, with --dry-run: every section in a process of its own,
    within its budget (the budgets add up to at most 480 s), on the CPU at toy sizes; what each writes is there."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "HPSEARCH_CACHE_DIR": str(tmp_path / "c")}
    done = subprocess.run(["bash", "bench/gpu_run.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    logs = "".join(f"\n== {p.name}\n{p.read_text()[-1500:]}" for p in tmp_path.glob("*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    budgets = [int(b) for b in re.findall(r"budget (\d+) s", done.stdout)]
    assert len(budgets) == 5 and sum(budgets) <= 480, done.stdout
    assert "nothing to probe" in json.loads((tmp_path / "probe.json").read_text())["cuda"]
    trials = json.loads((tmp_path / "gpu_precisions.json").read_text())[
        "a MiniLM trial in each precision, with and without CUDA graphs, against Trainer (warm)"]
    assert trials["fp32"]["plan"] == "fp32" and trials["fp32"]["warm_ms_per_step"] > 0
    assert trials["fp32 + graphs"]["accuracy"] == trials["fp32"]["accuracy"]  # on the CPU: the same step, uncaptured
    assert trials["fp32 + graphs"]["cuda_graphs"].startswith("off: not a CUDA device")  # recorded, never assumed
    assert len(trials["auto"]["eval_s_first_second"]) == 2 and "auto on a CPU" in trials["auto"]["reason"]
    lora = json.loads((tmp_path / "gpu_lora7b.json").read_text())["a 7B LoRA trial, from Llama-7B-shaped slices"]
    assert lora["bf16, 2 layers"]["steps"] == 2 and "bf16 + checkpointing: scaled to 32 layers, GB" in lora
    memory = json.loads((tmp_path / "gpu_memory.json").read_text())
    assert memory["memory given back after pruned trials"]["states"] == ["PRUNED"] * 3
    raw = json.loads((tmp_path / "FUSED.json").read_text())
    (tiny,) = raw["throughput"]
    assert [r["k"] for r in tiny["runs"]] == [2] and all("failed" not in r for r in tiny["runs"])
    assert all(r["trials"] == tiny["configs"] == 4 for r in tiny["runs"])
    (counted,) = raw["launches"]
    assert set(counted["counts"]) == {"1", "2"} and all(n > 50 for n in counted["counts"].values())


def test_the_packing_script_runs_packed_studies_reduced_on_the_cpu(tmp_path: Path, capsys) -> None:
    """bench/packing.py: every K runs the same grid through `hpsearch run` (workers per core here) and finds the
    same best; the profile script runs one trial (both in this process: their K studies are the processes)."""
    from bench import packing, profile

    out = tmp_path / "PACKING.md"
    packing.main(["--reduced", "--out", str(out)])
    raw = json.loads(out.with_suffix(".json").read_text())
    runs = raw["runs"]
    assert [r["k"] for r in runs] == [1, 2][: len(runs)] and all("failed" not in r for r in runs)
    assert all(r["trials"] == raw["grid"] == 4 for r in runs)
    assert len({(r["best_value"], json.dumps(r["best_params"], sort_keys=True)) for r in runs}) == 1
    assert "| 1 | 4 |" in out.read_text()
    capsys.readouterr()
    profile.main(["--reduced"])
    printed = capsys.readouterr().out
    assert "## Python, by own time" in printed and "steps" in printed

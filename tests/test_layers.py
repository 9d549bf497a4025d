"""The package's wings import only downward and no module closes an import cycle (the import-linter contracts in
pyproject.toml); every module sits in a layer; and the check does fail when an import points up."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.helpers import REPO

CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under ``cwd``, in a process of its own: import-linter finds the package by
    importing it, and this test's process has the checkout's package imported already."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def test_the_contracts_hold() -> None:
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_every_module_sits_in_a_layer() -> None:
    layers = next(c for c in CONTRACTS["contracts"] if c["type"] == "layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.split("|")}
    package = REPO / "hpsearch"
    tops = {f"hpsearch.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    tops |= {f"hpsearch.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert tops <= named, f"not in any layer: {sorted(tops - named)}"


def test_an_import_that_points_up_or_closes_a_cycle_breaks_a_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "hpsearch", tmp_path / "hpsearch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    loop = tmp_path / "hpsearch" / "finetune" / "loop.py"
    text = loop.read_text(encoding="utf-8")
    loop.write_text(text + "\n\ndef _up() -> None:\n    from ..study import record  # noqa: F401\n", encoding="utf-8")
    up = _lint(tmp_path)
    assert up.returncode == 1 and "hpsearch.finetune.loop -> hpsearch.study.record" in up.stdout
    loop.write_text(text, encoding="utf-8")
    device = tmp_path / "hpsearch" / "finetune" / "device.py"
    device.write_text(device.read_text(encoding="utf-8") + "\n\ndef _back() -> None:\n    from . import loop  # noqa\n",
                      encoding="utf-8")
    cycle = _lint(tmp_path)
    assert cycle.returncode == 1 and "No cycles are allowed in hpsearch.finetune" in cycle.stdout


MODULE_LINES, FUNCTION_LINES = 500, 60
"""How long a module and a function of the lower wings may grow before it is split (read top to bottom, each
function on one screen)."""


def test_the_lower_wings_keep_modules_and_functions_short() -> None:
    import ast

    long = []
    for wing in ("config", "finetune"):
        for path in sorted((REPO / "hpsearch" / wing).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(REPO)
            if len(text.splitlines()) > MODULE_LINES:
                long.append(f"{where}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > FUNCTION_LINES:
                        long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert not long, long

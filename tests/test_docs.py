"""The README a newcomer reads: short, its tables whole, and naming every command, flag, task, metric, task key,
hyperparameter, space key and shipped space the code has (so the docs cannot drift from the code unnoticed)."""
from __future__ import annotations

import re

import pytest

from hpsearch.config.options import RunOptions
from hpsearch.config.sections import ModelSection, StudySection, keys
from hpsearch.config.vocabulary import HYPERPARAMETERS
from hpsearch.tasks import TASKS, get_task
from tests.helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _tables(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip())) - 2


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 300


@pytest.mark.parametrize("path", ["README.md", "bench/README.md"])
def test_every_table_has_one_header_and_whole_rows(path: str) -> None:
    for table in _tables((REPO / path).read_text(encoding="utf-8")):
        assert len(table) >= 3 and re.fullmatch(r"\|(-+\|)+", table[1]), f"{path}: a table without a header: {table[0]}"
        assert all(_cells(row) == _cells(table[0]) for row in table), f"{path}: ragged table: {table[0]}"


def test_the_cli_reference_names_every_command_and_run_flag() -> None:
    from hpsearch.cli import cli

    reference = _section("CLI reference")
    assert len(_tables(reference)) == 1
    for command in cli.commands:
        assert f"hpsearch {command} " in reference or f"/ `{command} " in reference, command
    for _, spec in RunOptions.fields():
        assert spec.flag in reference, spec.flag


def test_the_task_table_names_every_task_its_keys_and_metrics() -> None:
    table = _section("Tasks")
    for name in TASKS:
        task = get_task(name)
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        for metric in task.metrics:
            assert f"`{metric.name}`" in row, (name, metric.name)
        for key in [c.key for c in task.columns] + list(task.options):
            assert f"`{key}`" in row or "as classification" in row, (name, key)


def test_the_space_reference_names_every_key_hyperparameter_and_shipped_space() -> None:
    reference = _section("Search-space reference")
    for key in keys(StudySection) + keys(ModelSection):
        assert re.search(rf"^\s+{key}:", reference, flags=re.MULTILINE), key
    for name, hp in HYPERPARAMETERS.items():
        row = next(line for line in reference.splitlines() if line.startswith(f"| `{name}` |"))
        shown = {str(hp.default)} | ({f"{hp.default:g}", f"{hp.default:g}".replace("e-0", "e-")}
                                     if not isinstance(hp.default, str) else set())
        assert any(f"| {text} |" in row for text in shown), (name, row)
    shipped = {p.name for p in (REPO / "search_spaces").glob("*.yaml")}
    assert {"lr_dropout.yaml", "full.yaml", "lora.yaml", "ner.yaml", "sft.yaml", "seq2seq.yaml"} <= shipped
    named = set(re.findall(r"`(\w+\.yaml)`", reference))
    assert shipped <= named, f"shipped spaces the reference does not name: {sorted(shipped - named)}"
    for path in re.findall(r"search_spaces/(\w+\.yaml)", README):
        assert (REPO / "search_spaces" / path).is_file(), path


def test_every_local_link_and_image_exists() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "hpsearch").rglob("*.py") if ">>>" in p.read_text()),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_docstring_examples_run(path) -> None:
    import doctest
    import importlib

    module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted and not failed


def test_the_measurements_the_readme_names_are_the_table_s() -> None:
    from hpsearch.config.measurements import CONSTRAINTS, OBJECTIVES

    reference = _section("Search-space reference")
    line = next(ln for ln in reference.splitlines() if ln.strip().startswith("constraints:"))
    bounded = re.findall(r"(\w+) [<>]=? \d", line)
    assert bounded and set(bounded) <= set(CONSTRAINTS), bounded
    objectives = re.search(r"metrics: \[accuracy, (\w+)\].*also ([\w, ]+)\)", reference)
    assert objectives and {objectives.group(1), *objectives.group(2).split(", ")} <= set(OBJECTIVES)

"""Space files as text: read YAML/JSON safely, apply ``--set`` overrides, read a data file's header, write YAML.

Nothing here validates: it turns files and flags into the raw dict that :mod:`hpsearch.config.validation` checks.
"""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import MISSING, ConfigError, Issue


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with ``yaml.safe_load``; a missing file or a syntax error is a ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [Issue("", MISSING, "no such file")]) from None
    except OSError as exc:
        raise ConfigError(str(path), [Issue("", MISSING, f"cannot be read: {exc.strerror}")]) from None
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), [Issue("", MISSING, f"is not valid YAML/JSON: {exc}")]) from None


def apply_overrides(raw: Any, overrides: Iterable[str], source: str = "--set") -> dict:
    """Apply ``KEY=VALUE`` overrides (dotted path, value parsed as YAML; ``null`` deletes the key).

    Returns a new dict; the input is not modified. All malformed overrides are reported together.
    """
    data = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    issues: list[Issue] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            issues.append(Issue("--set", item, "expected KEY=VALUE with a dotted KEY, e.g. fixed.epochs=1"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            issues.append(Issue(key, text, f"--set value is not valid YAML: {exc.problem}"))
            continue
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                issues.append(Issue(".".join(parts[: depth + 1]), child, f"--set {key}: is not a mapping"))
                break
            node = child
        else:
            if value is None:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = value
    if issues:
        raise ConfigError(source, issues)
    return data


def read_columns(file: Path, fmt: str) -> list[str]:
    """The column names of a local data file, read from its header or first record only."""
    if fmt in ("csv", "tsv"):
        with open(file, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t" if fmt == "tsv" else ",")
            return next(reader, [])
    if fmt in ("json", "jsonl"):
        with open(file, encoding="utf-8") as fh:
            head = fh.read(1).lstrip()
            fh.seek(0)
            if head == "[":
                records = json.load(fh)
                return list(records[0]) if records else []
            for line in fh:
                if line.strip():
                    return list(json.loads(line))
            return []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(file).names)
    raise ValueError(f"unknown format {fmt}")



def dump_yaml(config: dict, header: str = "") -> str:
    """Render a config as YAML in schema order, with an optional leading comment block."""
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body


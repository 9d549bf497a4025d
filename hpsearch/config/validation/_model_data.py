"""The ``model`` and ``data`` sections: each key against its section field (:mod:`hpsearch.config.sections`), the
model directory, the task, its columns and options, and both sources (files that exist, with those columns)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from ...errors import MISSING
from ...tasks import TASKS, get_task
from ..files import read_columns
from ..sections import DataSection, ModelSection, Source, default, keys, spec
from ..vocabulary import FILE_FORMATS, model_layer_count
from ._checker import Checker, join


def check_model(c: Checker, raw: Any) -> dict:
    """``model``: every key of :class:`ModelSection` checked by its kind, bound and choices (defaults filled);
    ``_layers`` carries the local model's layer count to the checks that need it."""
    model = c.mapping(raw, "model", keys(ModelSection))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ModelSection):
        kind, choices, low = f.metadata["kind"], f.metadata["choices"], f.metadata["low"]
        given = default(ModelSection, f.name)
        if kind is int:
            out[f.name] = c.integer(model, f.name, "model", default=given, low=low)
        elif kind is bool:
            out[f.name] = c.boolean(model, f.name, "model", default=given)
        else:
            out[f.name] = c.string(model, f.name, "model", default=given, choices=choices)
    if out["precision"] == "fp32" and out["dtype"] in ("bfloat16", "float16"):
        c.add("model.dtype", out["dtype"], "keeps frozen weights in half precision, which precision: fp32 cannot "
                                           "compute with; use precision bf16 or fp16 (mixed), or dtype float32")
    if out["precision"] == "bf16-true" and out["dtype"] not in ("auto", "bfloat16"):
        c.add("model.dtype", out["dtype"], "precision bf16-true trains every weight in bfloat16; drop model.dtype")
    out["_layers"] = _local_layers(c, out["name_or_path"])
    return out


def _local_layers(c: Checker, name: Any) -> int | None:
    """The layer count of a local model directory (None for a hub id, read later); a path that is no model is an
    issue."""
    if not isinstance(name, str):
        return None
    local = Path(name).expanduser()
    if local.is_dir():
        cfg_file = local / "config.json"
        if cfg_file.is_file():
            return model_layer_count(json.loads(cfg_file.read_text(encoding="utf-8")))
        c.add("model.name_or_path", name, "is a directory without config.json: not a transformers model")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        c.add("model.name_or_path", name, "no such directory (a hub id looks like 'org/name')")
    return None


def check_data(c: Checker, raw: Any) -> dict:
    """The data section: the task, its columns (defaults the sources may override) and options, both sources."""
    task_name = raw.get("task", "classification") if isinstance(raw, dict) else "classification"
    task = get_task(task_name) if task_name in TASKS else None
    column_keys = tuple(col.key for col in task.columns) if task else ()
    option_keys = tuple(task.options) if task else ()
    # An unknown task is reported once (below), not as one "unknown key" per column it would have taken.
    allowed = keys(DataSection) + column_keys + option_keys if task or not isinstance(raw, dict) else tuple(raw)
    data = c.mapping(raw, "data", allowed)
    task_name = c.string(data, "task", "data", default="classification", choices=TASKS)
    columns = {col.key: c.string(data, col.key, "data", default=col.default) for col in (task.columns if task else ())}
    out = {"task": task_name, **columns}
    for key, value in (task.options.items() if task else ()):
        out[key] = _check_option(c, data, key, value, getattr(task, "option_choices", {}).get(key, ()),
                                 getattr(task, "option_checks", {}).get(key))
    splits = ("train", "validation", "test") if isinstance(data, dict) and data.get("test") is not None else (
        "train", "validation")
    for split in splits:
        if task is None:  # which columns a source may name depends on the task: fix the task first
            out[split] = data.get(split, MISSING)
            continue
        out[split] = _check_source(c, data.get(split, MISSING), f"data.{split}", columns)
        if out[split]:
            _check_columns(c, task, split, out[split], data.get(split))
    for limit in ("max_train_samples", "max_eval_samples"):
        out[limit] = c.integer(data, limit, "data", default=None, low=spec(DataSection, limit)["low"])
    return out


def _check_columns(c: Checker, task: Any, split: str, source: dict, given: Any) -> None:
    """What the task says is wrong with a source's resolved columns, named where the user gave the column."""
    resolved = {col.key: source.get(col.key) for col in task.columns}
    own = given if isinstance(given, dict) else {}
    for key, why in task.column_problems(resolved):
        where = f"data.{split}.{key}" if key in own else f"data.{key}"
        if not any(i.key == where for i in c.issues):
            c.add(where, resolved.get(key) or MISSING, why)


def _check_source(c: Checker, raw: Any, path: str, defaults: dict) -> dict:
    if isinstance(raw, str):
        raw = {"path": raw}
    if isinstance(raw, dict) and "hub" in raw:
        src = c.mapping(raw, path, Source.HUB_KEYS + tuple(defaults))
        out = {"hub": c.string(src, "hub", path), "config": c.string(src, "config", path, default=None),
               "split": c.string(src, "split", path, default=path.rsplit(".", 1)[-1]),
               "revision": c.string(src, "revision", path, default=None)}
    else:
        src = c.mapping(raw, path, Source.FILE_KEYS + tuple(defaults))
        if not src:
            return {}
        formats = sorted(set(FILE_FORMATS.values()))
        file = c.string(src, "path", path)
        fmt = c.string(src, "format", path, default=None, choices=formats)
        if isinstance(file, str) and fmt is None:
            fmt = FILE_FORMATS.get(Path(file).suffix.lower())
            if fmt is None:
                c.add(f"{path}.path", file, f"has an unknown extension; name the format ({', '.join(formats)})")
        out = {"path": file, "format": fmt}
    for key in defaults:
        out[key] = c.string(src, key, path, default=defaults[key])
    if out.get("path") not in (None, MISSING) and out.get("format") not in (None, MISSING):
        _check_file_columns(c, path, out, tuple(defaults))
    return out


def _check_option(c: Checker, data: dict, key: str, value_default: Any, choices: tuple,
                  check: Callable[[Any], str | None] | None = None) -> Any:
    """A task option (``label_all_tokens``, ``num_beams`` ...): its default, or a value among its choices or
    that passes the task's check."""
    value = data.get(key, MISSING)
    if value is MISSING or value is None:
        return value_default
    why = f"must be one of {', '.join(map(str, choices))}" if choices and value not in choices else None
    why = why or (check(value) if check is not None else None)
    if why:
        c.add(f"data.{key}", value, why)
        return MISSING
    return value


def _check_file_columns(c: Checker, path: str, src: dict, column_keys: tuple[str, ...]) -> None:
    """The file exists and has the columns the task's keys name (a CoNLL file has positions, not names)."""
    file = Path(src["path"]).expanduser()
    if not file.is_file():
        c.add(f"{path}.path", src["path"], "no such file")
        return
    if src["format"] == "conll":
        return
    try:
        header = read_columns(file, src["format"])
    except Exception as exc:  # any parse failure is a config problem to report, not a crash
        c.add(f"{path}.path", src["path"], f"cannot be read as {src['format']}: {exc}")
        return
    for key in column_keys:
        col = src.get(key)
        if isinstance(col, str) and col not in header:
            c.add(join(path, key), col, f"is not a column of {src['path']}; its columns are: {', '.join(header)}")

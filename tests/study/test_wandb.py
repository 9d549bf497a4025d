"""``--wandb``: every trial as a W&B run, checked offline (WANDB_MODE=offline) by reading back the run files."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import optuna
import pytest

from hpsearch.study import record

wandb = pytest.importorskip("wandb", reason="the wandb extra (pip install 'hpsearch[wandb]')")


def read_run(path: Path) -> dict:
    """An offline run file (``run-*.wandb``): its records in LevelDB's log format (7-byte file header, 32 KiB
    blocks, records of checksum, length, type), each a ``wandb_internal_pb2.Record``; returns its run, history,
    summary and exit."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out: dict = {"history": [], "summary": {}, "config": {}}
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(pending)
            pending = b""
            which = rec.WhichOneof("record_type")
            if which == "run":
                out.update(name=rec.run.display_name, group=rec.run.run_group, tags=list(rec.run.tags),
                           project=rec.run.project)
                out["config"].update(_items(rec.run.config.update))
            elif which == "config":
                out["config"].update(_items(rec.config.update))
            elif which == "history":
                out["history"].append(_items(rec.history.item))
            elif which == "summary":
                out["summary"].update(_items(rec.summary.update))
            elif which == "exit":
                out["exit"] = rec.exit.exit_code
    return out


def _items(items) -> dict:
    """Protobuf key/value items (a key, or a path of nested keys) as a dict."""
    return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_logs_every_trial_offline(make_space, hpsearch, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    hpsearch("run", "--space", str(make_space(fixed__epochs=2)), "--trials", "3", "--quiet", "--wandb", "tuning",
             check=True)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    runs = {r["name"]: r for r in map(read_run, sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))}
    assert sorted(runs) == [f"trial-{t.number}" for t in study.trials]
    for t in study.trials:
        run = runs[f"trial-{t.number}"]
        assert run["project"] == "tuning" and run["group"] == "tiny" and run["tags"] == [t.state.name.lower()]
        assert run["config"]["learning_rate"] == pytest.approx(t.params["learning_rate"])
        assert run["config"]["epochs"] == 2  # fixed hyperparameters too
        steps = {h["_step"]: h["accuracy"] for h in run["history"] if "accuracy" in h}
        assert steps == pytest.approx(t.intermediate_values)
        assert run["summary"]["optuna_state"] == t.state.name and run["summary"][record.STATUS] == t.user_attrs[
            record.STATUS]
        if t.state.name == "COMPLETE":
            assert run["summary"]["trial_value"] == pytest.approx(t.value)
            assert run["summary"]["val_accuracy"] == pytest.approx(t.user_attrs["val_accuracy"])
        assert run.get("exit", 0) == 0


def test_wandb_without_the_package_is_the_machine_s_problem(make_space, hpsearch, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--wandb")
    assert res.returncode == 1 and "pip install 'hpsearch[wandb]'" in res.stderr  # only the machine can say
    assert not (make_space().parent / "studies.db").exists()

"""`hpsearch dashboard` serves the real optuna-dashboard on loopback; its JSON API shows what hpsearch stored."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hpsearch.config.load import load_space
from hpsearch.config.options import RunOptions
from hpsearch.study import runner
from hpsearch.study.progress import Progress


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_dashboard_shows_study_trials_and_attributes(make_space, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/d.db"
    runner.run_study(load_space(make_space(fixed__epochs=1)), RunOptions(storage=storage, trials=2),
                     progress=Progress())
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "dashboard", "--storage", storage, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and studies is None:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.3)
        assert studies is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        summary = next(s for s in studies if s["study_name"] == "tiny")
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == 2
        attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
        for key in ("val_accuracy", "train_time_s", "device", "epochs_completed", "status"):
            assert key in attrs, key
        study_attrs = {a["key"] for a in detail["user_attrs"]}
        assert "metric" in study_attrs and any(k.startswith("config:") for k in study_attrs)
        assert detail.get("objective_names") == ["accuracy"]
        assert "hpsearch config" in json.dumps(detail.get("note", {}))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with socket.socket() as s:  # bound to loopback by default: nothing listens on other interfaces
        assert s.connect_ex(("127.0.0.1", port)) != 0

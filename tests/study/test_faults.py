"""Faults a service meets, each through the CLI as a user would meet it: a disk that fills or turns read-only under
the kept models, tied trials, and a worker killed under a launcher whose study still reaches its total."""
from __future__ import annotations

import errno
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.study import artifacts
from tests.helpers import start_cli


def _disk_fills(monkeypatch: pytest.MonkeyPatch, after: int) -> list[str]:
    """The artifact store's disk fills ``after`` bytes into each write: the write stops there with ENOSPC, as a
    full disk stops it (the bytes before are on disk)."""
    ids: list[str] = []
    real = optuna.artifacts.FileSystemArtifactStore.write

    def write(self, artifact_id, content_body):
        ids.append(artifact_id)

        class Cut:
            def __init__(self) -> None:
                self.left = after

            def read(self, n: int = -1) -> bytes:
                if self.left <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                data = content_body.read(min(n if n > 0 else self.left, self.left))
                self.left -= len(data)
                return data

        real(self, artifact_id, Cut())

    monkeypatch.setattr(optuna.artifacts.FileSystemArtifactStore, "write", write)
    return ids


def test_a_model_cut_short_by_a_full_disk_is_not_kept_and_not_left(make_space, hpsearch, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = _disk_fills(monkeypatch, after=100_000)
    space = make_space(fixed__epochs=1, study__pruner="none")
    hpsearch("run", "--space", str(space), "--trials", "2", "--quiet", "--keep-best", "1", check=True)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    assert attempts  # a save was tried
    for t in study.trials:
        assert t.state.name == "COMPLETE" and artifacts.model_artifact_ids(t) == []  # nothing half-written attached
        assert t.user_attrs["model_kept"] is False
    assert "No space left" in study.trials[0].user_attrs["keep_error"]  # the best so far: its save was tried
    assert list((tmp_path / "studies-artifacts").iterdir()) == []  # and nothing left filling the disk
    res = hpsearch("export", "--study", "tiny", "--output", "best.yaml", "--model", "best-model")
    assert res.returncode == 2 and "has no kept model" in res.stderr and "Traceback" not in res.stderr


def test_a_read_only_store_is_a_note_and_the_study_goes_on(make_space, hpsearch, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    space = make_space(fixed__epochs=1, study__pruner="none", study__enqueue=[
        {"learning_rate": 1e-4, "dropout": 0.0}, {"learning_rate": 3e-3, "dropout": 0.0}])
    hpsearch("run", "--space", str(space), "--trials", "1", "--quiet", "--keep-best", "1", check=True)

    def read_only(self, artifact_id):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(optuna.artifacts.FileSystemArtifactStore, "remove", read_only)
    monkeypatch.setattr(optuna.artifacts.FileSystemArtifactStore, "write",
                        lambda self, artifact_id, body: read_only(self, artifact_id))
    res = hpsearch("run", "--space", str(space), "--trials", "2", "--quiet", "--keep-best", "1")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    errors = [t.user_attrs.get("keep_error", "") for t in study.trials[1:]]
    assert any("Read-only file system" in e for e in errors) or "could not be removed" in res.stderr, res.stderr


def test_tied_trials_write_no_model_that_is_removed_at_once(make_space, hpsearch, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Four trials of one config and seed (the same value): the first keeps its model, the ties after it rank
    behind it and save none (they used to save and be removed at once)."""
    writes: list[str] = []
    real = optuna.artifacts.FileSystemArtifactStore.write
    monkeypatch.setattr(optuna.artifacts.FileSystemArtifactStore, "write",
                        lambda self, aid, body: writes.append(aid) or real(self, aid, body))
    same = {"learning_rate": 1e-3, "dropout": 0.0}
    space = make_space(fixed__epochs=1, study__pruner="none", study__enqueue=[same] * 4,
                       params__learning_rate={"type": "categorical", "choices": [1e-3]},
                       params__dropout={"type": "categorical", "choices": [0.0]})
    hpsearch("run", "--space", str(space), "--trials", "4", "--quiet", "--keep-best", "1", "--checkpoint-every-s",
             "0", check=True)  # models only: checkpoints are written through the store too
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies.db")
    assert len({t.value for t in study.trials}) == 1
    assert len(writes) == 1 and [t.user_attrs["model_kept"] for t in study.trials] == [True, False, False, False]


def test_a_launcher_whose_study_reached_its_total_exits_0_naming_the_worker_that_died(make_space,
                                                                                       tmp_path: Path) -> None:
    space = str(make_space("slow.yaml", fixed__epochs=12))
    launcher = start_cli(["run", "--space", space, "--total", "2", "--workers", "2", "--quiet", "--storage",
                          f"sqlite:///{tmp_path}/w.db", "--heartbeat-interval", "1", "--grace-period", "3"], tmp_path)
    pids: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = launcher.stderr.readline()
        for w, pid in re.findall(r"worker (w\d) started \(pid (\d+)", line):
            pids[w] = int(pid)
        if "[w0]" in line and "started:" in line:
            break
    time.sleep(1.0)
    subprocess.run(["kill", "-KILL", str(pids["w0"])], check=True)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err
    assert "worker w0 was killed by SIGKILL; the study reached its 2 finished trials all the same" in err
    states = [t.state.name for t in optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/w.db").trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 2 and "RUNNING" not in states


def test_an_interrupted_launcher_exits_130_never_a_raw_status(make_space, tmp_path: Path) -> None:
    launcher = start_cli(["run", "--space", str(make_space("slow.yaml", fixed__epochs=400)), "--trials", "2",
                          "--workers", "2", "--quiet", "--storage", f"sqlite:///{tmp_path}/i.db"], tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "started:" not in launcher.stderr.readline():
        pass
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: the running trial was marked FAIL")

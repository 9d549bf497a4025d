"""``hpsearch run --ray``: the study's workers as Ray tasks, here on a local Ray instance on the CPU."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.study import record

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'hpsearch[ray]')")


def test_workers_run_as_ray_tasks_on_one_shared_study(make_space, hpsearch, tmp_path: Path) -> None:
    """Two Ray tasks share a total of 3 trials, each task a fused group (--fuse 2); a worker outside Ray then joins
    the same study."""
    url = f"sqlite:///{tmp_path}/r.db"
    space = str(make_space(fixed__epochs=1))
    res = hpsearch("run", "--space", space, "--total", "3", "--workers", "2", "--ray", "--device", "cpu",
                   "--storage", url, "--fuse", "2", check=True)
    assert "2 workers as Ray tasks on a local Ray" in res.stderr and "0 GPU and 1 CPU each" in res.stderr
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    assert len({t.user_attrs[record.WORKER] for t in trials if t.state.name != "FAIL"}) == 2  # both tasks trained
    assert all(t.user_attrs[record.FUSED_GROUP] for t in trials if t.state.name != "FAIL")
    hpsearch("run", "--space", space, "--trials", "1", "--device", "cpu", "--storage", url, check=True)
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == len(trials) + 1


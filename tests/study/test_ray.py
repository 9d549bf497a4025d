"""``hpsearch run --ray``: the study's workers as Ray tasks, here on a local Ray instance on the CPU."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.study import record

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'hpsearch[ray]')")


def test_ray_tasks_pack_on_a_cluster_s_gpu_fuse_their_trials_and_share_one_study(make_space, hpsearch,
                                                                                  tmp_path: Path) -> None:
    """``--ray --trials-per-gpu 2 --fuse 2`` on a local Ray that declares one GPU: two tasks of half a GPU each
    share it, each capped at half its memory and each a fused group (here each trains on the CPU and records what
    Ray gave it); they share a total of 3 trials, and a worker outside Ray then joins the same study. (One Ray
    session for all of it: starting Ray costs more than the trials.)"""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # the launcher joins this Ray, and shuts it down
    url = f"sqlite:///{tmp_path}/r.db"
    space = str(make_space(fixed__epochs=1))
    res = hpsearch("run", "--space", space, "--total", "3", "--trials-per-gpu", "2", "--fuse", "2", "--ray",
                   "--storage", url, check=True)
    assert "2 workers as Ray tasks on a local Ray (2 CPUs, 1 GPUs): 0.5 GPU and 1 CPU each" in res.stderr
    trials = [t for t in optuna.load_study(study_name="tiny", storage=url).trials if t.state.name != "FAIL"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    assert {t.user_attrs["gpu_memory_fraction"] for t in trials} == {"0.5"}
    assert {t.user_attrs["gpu"] for t in trials} == {"0"}  # the GPU id Ray assigned both tasks
    assert len({t.user_attrs[record.WORKER] for t in trials}) == 2  # both tasks trained
    assert all(t.user_attrs[record.FUSED_GROUP] for t in trials)
    assert not ray.is_initialized()
    before = len(optuna.load_study(study_name="tiny", storage=url).trials)
    hpsearch("run", "--space", space, "--trials", "1", "--device", "cpu", "--storage", url, check=True)
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == before + 1

"""Many workers, one study: real processes on real storage, a shared total, a worker killed mid-trial."""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.config.placement import MEMORY_FRACTION_ENV, Slot, place
from hpsearch.study import record
from hpsearch.study.machine import visible_gpus
from hpsearch.study.storage import open_storage
from tests.helpers import REPO, finish, kill_a_worker_mid_trial, start_cli


def test_two_workers_share_a_total_on_an_empty_database(empty_database: str, make_space, tmp_path: Path,
                                                        study_name: str) -> None:
    """Two `hpsearch run --total 3` started together on a database without tables (a new CI machine's, issue 10):
    trials numbered without gaps or repeats, exactly 3 finished, and no surplus trial trains. (The tables' own race,
    many processes at once, is tests/study/test_storage.py's; many askers at once, tests/study/test_budget.py's.)"""
    url = empty_database
    space = str(make_space(fixed__epochs=1))
    procs = [start_cli(["run", "--space", space, "--total", "3", "--quiet", "--storage", url, "--study-name",
                        study_name], tmp_path) for _ in range(2)]
    finish(procs)
    trials = optuna.load_study(study_name=study_name, storage=url).trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no duplicates, no gaps
    assert len([t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]) == 3
    others = [t for t in trials if t.state.name not in ("COMPLETE", "PRUNED")]
    assert all(t.state.name == "FAIL" and t.user_attrs["status"].startswith("skipped") for t in others)
    assert all("steps" not in t.user_attrs for t in others)  # a surplus trial never trains


def test_killed_worker_trial_fails_is_retried_and_total_is_reached(postgres_url: str, make_space, hpsearch,
                                                                  tmp_path: Path, study_name: str) -> None:
    retry = kill_a_worker_mid_trial(postgres_url, make_space, tmp_path, study_name, hpsearch)
    assert retry.state.name in ("COMPLETE", "PRUNED")


def test_packed_workers_share_a_total_and_get_their_gpu_and_memory_share(make_space, hpsearch, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--trials-per-gpu 2` on a machine whose one visible GPU is number 4: two workers on a journal file (a relative
    URL, as a user types it) sharing a budget of 4 trials, both pinned to GPU 4 with half its memory each (here on
    the CPU, each trial records what its worker process was given)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)  # CUDA would find that one GPU
    res = hpsearch("run", "--space", str(make_space(fixed__epochs=1)), "--trials", "4", "--trials-per-gpu", "2",
                   "--storage", "journal:///p.log", check=True)
    assert res.stderr.count("gpu 4, 50% of its memory") == 2
    assert "[w0]" in res.stderr and "[w1]" in res.stderr and "locked" not in res.stderr
    trials = optuna.load_study(study_name="tiny", storage=open_storage(f"journal:///{tmp_path / 'p.log'}")).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len({t.number for t in trials}) == len(trials)
    assert {t.user_attrs.get("device") for t in finished} == {"cpu"}
    assert {(t.user_attrs[record.GPU], t.user_attrs[record.GPU_MEMORY_FRACTION]) for t in finished} == {("4", "0.5")}
    assert len({t.user_attrs[record.WORKER] for t in finished}) == 2
    # the space is seeded (sampler seed 0): each worker draws its own configs, none runs another's
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)


def test_workers_go_round_robin_over_gpus_and_share_their_memory() -> None:
    slots = place(5, ["0", "1"])
    assert [s.gpu for s in slots] == ["0", "1", "0", "1", "0"]
    assert [s.memory_fraction for s in slots] == pytest.approx([1 / 3, 0.5, 1 / 3, 0.5, 1 / 3])
    assert [s.gpu for s in place(None, ["2", "3"], per_gpu=2)] == ["2", "3", "2", "3"]
    assert [(s.gpu, s.memory_fraction) for s in place(None, ["0", "1"])] == [("0", None), ("1", None)]
    assert [s.gpu for s in place(3, [])] == [None] * 3
    cores = os.cpu_count() or 1
    assert {s.threads for s in place(2, [])} == {max(1, cores // 2)}
    assert {s.threads for s in place(None, ["0"], per_gpu=4)} == {max(1, cores // 4)}


def test_visible_gpus_follow_cuda_visible_devices_as_far_as_cuda_finds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    for value, expected in (("2,3", ("2", "3")), (" 1 ", ("1",)), ("", ()), ("-1", ()),
                            ("GPU-5c1e,GPU-77ab", ("GPU-5c1e", "GPU-77ab")), ("0,1,7", ("0", "1"))):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == expected, value
        assert visible_gpus("cpu") == ()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)  # listed, but no CUDA here: not usable
    assert visible_gpus() == ()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 3)
    assert visible_gpus() == ("0", "1", "2")


def test_worker_environment_pins_gpus_caps_memory_and_splits_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEMORY_FRACTION_ENV, "0.3")  # the parent's own cap is not inherited
    env = Slot("5", 0.25, 4).env(os.environ, {"HPSEARCH_STORAGE": "x"})
    assert (env["CUDA_VISIBLE_DEVICES"], env[MEMORY_FRACTION_ENV], env["OMP_NUM_THREADS"]) == ("5", "0.25", "4")
    assert env["HPSEARCH_STORAGE"] == "x"
    alone = Slot("5", None, 8).env(os.environ)
    assert MEMORY_FRACTION_ENV not in alone and alone["MKL_NUM_THREADS"] == "8"
    cpu = Slot(None, None, 1).env(os.environ)
    assert cpu["OMP_NUM_THREADS"] == "1" and cpu.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_compose_and_dockerfile_are_consistent_with_the_cli(hpsearch) -> None:
    root = REPO
    compose = yaml.safe_load((root / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "dashboard", "worker", "redis", "proxy"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    # one container sees every GPU and its launcher spreads the workers (replicas of count 1 all got GPU 0)
    assert gpu["count"] == "all" and "replicas" not in services["worker"]["deploy"]
    assert "--workers" in services["worker"]["command"]
    assert services["dashboard"]["ports"][0].startswith("${DASHBOARD_BIND:-127.0.0.1}:")
    for service, sub in (("worker", "run"), ("dashboard", "dashboard"), ("proxy", "storage-proxy")):
        command = services[service]["command"]
        assert command[0] == sub
        help_text = hpsearch(sub, "--help", check=True).stdout
        for flag in (c for c in command if c.startswith("--")):
            assert flag in help_text, (service, flag)
    docker = (root / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE" in docker and 'ENTRYPOINT ["hpsearch"]' in docker
    for line in docker.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (root / src).exists(), src

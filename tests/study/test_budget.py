"""``--total`` is exact with any number of workers, each with any number of threads (a fused group's members): the
study's trials are counted and the next one created in one step (:func:`hpsearch.study.runner.asking`), under a lock
every worker of the study shares. The race runs many times, fast: trials that train nothing, many askers at once
finishing together, as a fused group's members do."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from hpsearch.study import runner
from hpsearch.study.storage import open_storage, study_lock

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _ask_to_total(url: str, name: str, total: int, threads: int, tickets: int | None = None) -> list[int]:
    """``threads`` askers on study ``name`` until it has ``total`` finished trials, each trial over at once (every
    third pruned); return how many trials each asker ran. Nothing but the asking checks the total here: a trial
    created past it trains, and the study ends with more than ``total``."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    ran = [0] * threads

    def objective(trial: optuna.Trial) -> float:
        if trial.number % 3 == 2:
            raise optuna.TrialPruned()
        return float(trial.number)

    def asker(i: int) -> None:
        count = {"callbacks": [lambda s, t: ran.__setitem__(i, ran[i] + 1)], "catch": ()}
        runner._run_to_total(study, objective, count, poll=0.001)

    with runner.asking(study, runner.Tickets(tickets), total, lock=lambda: study_lock(url, name)):
        workers = [threading.Thread(target=asker, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
    return ran


def _exact(url: str, name: str, total: int) -> None:
    trials = optuna.load_study(study_name=name, storage=open_storage(url, read_only=True)).trials
    states = [t.state.name for t in trials]
    assert len(trials) == total and set(states) <= {"COMPLETE", "PRUNED"}, states


@pytest.mark.parametrize("round_", range(3))
def test_many_threads_of_one_worker_ask_exactly_the_total(tmp_path: Path, round_: int) -> None:
    url, name = f"sqlite:///{tmp_path}/t.db", "threads"
    optuna.create_study(study_name=name, storage=url)
    ran = _ask_to_total(url, name, total=40, threads=8)
    assert sum(ran) == 40
    _exact(url, name, 40)


def test_a_worker_s_trials_stop_at_its_tickets_also_with_room_in_the_total(tmp_path: Path) -> None:
    url, name = f"sqlite:///{tmp_path}/t.db", "tickets"
    optuna.create_study(study_name=name, storage=url)
    assert sum(_ask_to_total(url, name, total=100, threads=4, tickets=9)) == 9
    assert len(optuna.load_study(study_name=name, storage=open_storage(url, read_only=True)).trials) == 9


CHILD = """
import json, os, sys, time
from tests.study.test_budget import _ask_to_total
url, name, total, threads, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
open(go + "." + str(os.getpid()), "w").close()  # ready
while not os.path.exists(go):  # every worker starts at once
    time.sleep(0.001)
print(json.dumps(_ask_to_total(url, name, total, threads)))
"""


def _storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/w.db"
    if kind == "journal":
        return f"journal:////{str(tmp_path).lstrip('/')}/w.log"
    return request.getfixturevalue({"redis": "redis_url", "postgresql": "postgres_url", "mysql": "mysql_url"}[kind])


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql", "mysql", "redis"])
def test_workers_of_several_threads_ask_exactly_the_total_on_every_locking_storage(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, study_name: str) -> None:
    """Two processes of four askers each, started together, on each storage that offers a lock across workers:
    exactly the total, nothing skipped."""
    url, name, total = _storage(kind, tmp_path, request), study_name, 40
    optuna.create_study(study_name=name, storage=open_storage(url))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, name, str(total), "4", str(go)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.*"))) < len(procs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.01)
    go.touch()
    ran = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        ran.append(sum(json.loads(out.strip().splitlines()[-1])))
    assert sum(ran) == total, ran
    _exact(url, name, total)

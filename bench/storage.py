"""Storage throughput: how many trials per second a study's storage sustains as workers are added.

    python -m bench.storage                     # 1,000 trials at 1, 4, 16 and 64 workers on each storage
    python -m bench.storage --trials 300 --workers 1,4 --storages sqlite,journal

No training: each worker process runs hpsearch's runner loop (``runner._run_to_total`` within ``runner.asking``: the
shared ``--total`` budget counted and the next trial created under the study's lock, the stale-trial check before
each trial, hpsearch's heartbeats on storages Optuna gives none) with a trivial objective that does what a real
trial does to the storage: three suggested parameters, two intermediate
reports, six user attributes, then its value. Workers start, open the storage and load the study, then wait for
a common start signal, so process start-up and imports are not counted. Storages: SQLite (a fresh file; at most
4 workers, as `hpsearch run` allows), PostgreSQL (a fresh database), the journal on a file and on Redis, and
`hpsearch storage-proxy` (gRPC) in front of a fresh PostgreSQL database.

Reported per run: trials per second over the study (wall time from the start signal to the last worker's end)
and the mean storage time per trial as a worker sees it (its loop time / its trials: everything but the
objective is storage work). Writes bench/results/STORAGE.md and bench/results/raw/storage.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import RAW, REPO, RESULTS, machine, now

POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = "redis://127.0.0.1:6379/14"
SQLITE_MAX_WORKERS = 4


def objective(trial) -> float:
    """What a real trial writes, without the training."""
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    batch = trial.suggest_categorical("batch_size", [16, 32, 64])
    dropout = trial.suggest_float("dropout", 0.0, 0.3)
    value = 0.5 + 0.1 * (lr * 1e3) - dropout / 10 + batch / 1e4
    for step in (1, 2):
        trial.report(value * step / 2, step)
    for key in ("status", "device", "epochs_completed", "train_time_s", "val_accuracy", "peak_memory_mb"):
        trial.set_user_attr(key, 1.0 if key != "status" else "completed")
    return value


def worker(url: str, study_name: str, total: int, start_file: str, out_file: str) -> None:
    import optuna

    from hpsearch.study import runner
    from hpsearch.study.objective import BudgetReached
    from hpsearch.study.storage import liveness_for, open_storage, study_lock

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    liveness = liveness_for(storage, url, 60, None, 2)
    study = optuna.load_study(study_name=study_name, storage=storage)
    fn = (lambda trial: _trial(trial, total, liveness))
    Path(out_file + ".ready").touch()
    while not os.path.exists(start_file):
        time.sleep(0.01)
    mine: list = []
    t0 = time.perf_counter()
    with runner.asking(study, runner.Tickets(None), total, liveness, lambda: study_lock(url, study_name)):
        runner._run_to_total(study, fn, {"callbacks": [lambda s, t: mine.append(t.number)],
                                         "catch": (BudgetReached,)}, poll=0.2)
    Path(out_file).write_text(json.dumps({"seconds": time.perf_counter() - t0, "trials": len(mine)}))


def _trial(trial, total: int, liveness) -> float:
    """The objective as hpsearch's Objective wraps a trial: heartbeats where Optuna has none, the budget check."""
    from hpsearch.study.objective import start_trial

    if liveness is None:
        start_trial(trial, total)
        return objective(trial)
    with liveness.pulse(trial.storage, trial._trial_id):
        start_trial(trial, total, liveness)
        return objective(trial)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Storage:
    """A fresh storage of one kind for one run; ``close`` removes it."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.cleanup = kind, []
        if kind == "sqlite":
            self.url = f"sqlite:///{work / f'{uuid.uuid4().hex[:8]}.db'}"
        elif kind == "journal":
            self.url = f"journal:////{str(work).lstrip('/')}/{uuid.uuid4().hex[:8]}.log"
        elif kind == "redis":
            import redis

            client = redis.Redis.from_url(REDIS)
            client.flushdb()
            self.cleanup.append(client.flushdb)
            self.url = REDIS
        elif kind in ("postgresql", "grpc"):
            self.url = self._fresh_postgres()
            if kind == "grpc":
                port = _free_port()
                proxy = subprocess.Popen([sys.executable, "-m", "hpsearch", "storage-proxy", "--storage", self.url,
                                          "--port", str(port)], cwd=REPO, stderr=subprocess.DEVNULL)
                self.cleanup.insert(0, lambda: (proxy.send_signal(signal.SIGINT), proxy.wait(timeout=30)))
                self.url = f"grpc://127.0.0.1:{port}"
                from hpsearch.study.storage import open_storage

                for _ in range(100):
                    try:
                        open_storage(self.url)
                        break
                    except Exception:
                        time.sleep(0.2)
        else:
            raise ValueError(kind)

    def _fresh_postgres(self) -> str:
        import sqlalchemy

        server = sqlalchemy.engine.make_url(POSTGRES)
        name = f"hpsearch_bench_{uuid.uuid4().hex[:8]}"
        admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
            admin.dispose()

        self.cleanup.append(drop)
        return server.set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        for fn in self.cleanup:
            try:
                fn()
            except Exception as exc:
                print(f"cleanup of {self.kind}: {exc}", file=sys.stderr)


def one_run(kind: str, workers: int, trials: int, work: Path) -> dict:
    import optuna

    from hpsearch.study.storage import open_storage

    store = Storage(kind, work)
    try:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        optuna.create_study(study_name=name, storage=open_storage(store.url), direction="maximize")
        start = work / f"{name}.start"
        outs = [work / f"{name}.{i}.json" for i in range(workers)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        procs = [subprocess.Popen([sys.executable, "-m", "bench.storage", "--worker", store.url, name, str(trials),
                                   str(start), str(out)], env=env, cwd=REPO) for out in outs]
        while not all(Path(str(o) + ".ready").exists() for o in outs):
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"{kind}: a worker failed to start")
            time.sleep(0.05)
        t0 = time.perf_counter()
        start.touch()
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - t0
        if any(codes):
            raise RuntimeError(f"{kind} x {workers}: worker exit codes {codes}")
        runs = [json.loads(o.read_text()) for o in outs]
        done = optuna.load_study(study_name=name, storage=open_storage(store.url, read_only=True)).trials
        finished = sum(t.state.is_finished() and t.state.name != "FAIL" for t in done)
        per_trial = sum(r["seconds"] for r in runs) / max(1, sum(r["trials"] for r in runs))
        return {"storage": kind, "workers": workers, "trials": finished, "wall_s": round(wall, 2),
                "trials_per_s": round(finished / wall, 1), "ms_per_trial": round(per_trial * 1000, 1),
                "duplicates": len(done) - len({t.number for t in done})}
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--workers", default="1,4,16,64")
    ap.add_argument("--storages", default="sqlite,postgresql,journal,redis,grpc")
    ap.add_argument("--append", action="store_true",
                    help="Keep the rows of earlier runs in bench/results/raw/storage.json (this run's replace theirs)")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        url, name, total, start, out = a.worker
        worker(url, name, int(total), start, out)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-storage-bench-") as tmp:
        for kind in a.storages.split(","):
            for n in (int(w) for w in a.workers.split(",")):
                if kind == "sqlite" and n > SQLITE_MAX_WORKERS:
                    continue
                row = one_run(kind, n, a.trials, Path(tmp))
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    write_report(rows, a.append, " ".join(sys.argv[1:]))


def write_report(rows: list[dict], append: bool, command: str) -> None:
    """bench/results/raw/storage.json (merged with earlier rows when ``append``) and bench/results/STORAGE.md from
    all rows."""
    raw = RAW
    raw.mkdir(parents=True, exist_ok=True)
    if append and (raw / "storage.json").is_file():
        mine = {(r["storage"], r["workers"]) for r in rows}
        rows = [r for r in json.loads((raw / "storage.json").read_text())
                if (r["storage"], r["workers"]) not in mine] + rows
    (raw / "storage.json").write_text(json.dumps(rows, indent=1))
    kinds = {"sqlite": "SQLite file", "postgresql": "PostgreSQL", "journal": "journal file",
             "redis": "Redis journal", "grpc": "gRPC proxy -> PostgreSQL"}
    counts = sorted({r["workers"] for r in rows})
    table = ["| storage | " + " | ".join(f"{n} worker{'s' * (n > 1)}: trials/s (ms/trial)" for n in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for kind in dict.fromkeys(r["storage"] for r in rows):
        cells = []
        for n in counts:
            r = next((r for r in rows if r["storage"] == kind and r["workers"] == n), None)
            cells.append(f"{r['trials_per_s']} ({r['ms_per_trial']})" if r
                         else "refused (> 4 on SQLite)" if kind == "sqlite" else "not run")
        table.append(f"| {kinds[kind]} | " + " | ".join(cells) + " |")
    text = "\n".join([
        "# Storage throughput: trials per second as workers are added", "",
        f"- date: {now()}",
        f"- machine: {machine()}; the workers and the database servers share it",
        f"- command: `python -m bench.storage {command}`",
        f"- {sorted({r['trials'] for r in rows})} trials per run, a trivial objective through hpsearch's runner loop "
        "(see the script)", "",
        *table, "",
        "ms/trial: a worker's loop time divided by its trials (storage work only: the objective is trivial). "
        f"Every run finished exactly its trials with no duplicate numbers: "
        f"{all(r['duplicates'] == 0 for r in rows) and len({r['trials'] for r in rows}) == 1}.", ""])
    (RESULTS / "STORAGE.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

"""The shipped cluster files (cluster/kubernetes, cluster/slurm) run commands hpsearch has, with what a cluster
needs: the storage URL from a Secret, one GPU per pod or task, and signals passed on to the worker."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.helpers import REPO

CLUSTER = REPO / "cluster"


def _run_flags(argv: list[str], hpsearch) -> None:
    """``argv`` is an ``hpsearch run`` command line whose every flag ``hpsearch run --help`` lists."""
    assert argv[0] == "run", argv
    help_text = hpsearch("run", "--help", check=True).stdout
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in help_text, flag


def _worker(path: Path) -> dict:
    job = yaml.safe_load(path.read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    storage = next(e for e in container["env"] if e["name"] == "HPSEARCH_STORAGE")
    assert set(storage) == {"name", "valueFrom"} and "secretKeyRef" in storage["valueFrom"]  # never a literal URL
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}
    assert pod["terminationGracePeriodSeconds"] >= 60  # an evicted pod's worker saves its trial at the next step
    return {"job": job, "container": container}


def test_the_kubernetes_job_runs_one_gpu_worker_per_pod(hpsearch) -> None:
    found = _worker(CLUSTER / "kubernetes" / "job.yaml")
    argv = found["container"]["args"]
    _run_flags(argv, hpsearch)
    assert "--total" in argv  # pods share one budget
    assert argv[argv.index("--artifacts") + 1].startswith("/data/")  # checkpoints on the shared volume
    assert found["job"]["spec"]["parallelism"] >= 1


def test_the_indexed_kubernetes_job_packs_trials_on_each_pod_s_gpu(hpsearch) -> None:
    found = _worker(CLUSTER / "kubernetes" / "job-indexed.yaml")
    spec = found["job"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 1
    script = found["container"]["args"][0]
    argv = shlex.split(script.split("exec hpsearch", 1)[1])
    _run_flags(argv, hpsearch)
    assert argv[argv.index("--trials-per-gpu") + 1] == "4" and "--total" in argv and "--artifacts" in argv


def _slurm_task(tmp_path: Path, sig: int) -> tuple[subprocess.CompletedProcess, dict]:
    """The array script with stand-ins for ``hpsearch`` (records its arguments, exits 143 on TERM) and ``scontrol``
    (records its arguments), sent ``sig`` once the worker runs."""
    script = CLUSTER / "slurm" / "hpsearch.sbatch"
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (tmp_path / "got").unlink(missing_ok=True)
    (tmp_path / "argv").unlink(missing_ok=True)
    (bin_ / "hpsearch").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/argv\ntrap 'echo TERM > {tmp_path}/got; "
                                   "exit 143' TERM\nwhile true; do sleep 0.1; done\n")
    (bin_ / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/scontrol\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "HPSEARCH_STORAGE": "sqlite:///x.db",
           "HOME": str(tmp_path), "SLURM_JOB_ID": "4242"}
    proc = subprocess.Popen(["bash", str(script), "space.yaml", "20", "--trials-per-gpu", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "argv").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), env


def test_the_slurm_array_script_passes_its_arguments_and_signals_on_and_requeues_at_the_time_limit(
        tmp_path: Path, hpsearch) -> None:
    """USR1 (``--signal=B:USR1@120``: the time limit is near) and TERM (scancel) both reach the worker as SIGTERM
    (it saves its trial and exits 143, which the script exits with); only the time limit requeues the task."""
    script = CLUSTER / "slurm" / "hpsearch.sbatch"
    directives = [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "--gpus-per-task=1" in directives and any(d.startswith("--array=") for d in directives)
    assert "--signal=B:USR1@120" in directives and "--requeue" in directives
    ran, env = _slurm_task(tmp_path, signal.SIGUSR1)
    assert (tmp_path / "got").read_text().strip() == "TERM" and ran.returncode == 143, ran.stderr
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "4242"]
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:5] == ["run", "--space", "space.yaml", "--total", "20"] and argv[-2:] == ["--trials-per-gpu", "2"]
    _run_flags(argv, hpsearch)
    (tmp_path / "scontrol").unlink()
    ran, _ = _slurm_task(tmp_path, signal.SIGTERM)
    assert (tmp_path / "got").read_text().strip() == "TERM" and ran.returncode == 143
    assert not (tmp_path / "scontrol").exists()  # cancelled: not requeued
    missing = subprocess.run(["bash", str(script), "space.yaml"], env={**env, "HPSEARCH_STORAGE": ""},
                             capture_output=True, text=True, timeout=20)
    assert missing.returncode != 0 and "HPSEARCH_STORAGE" in missing.stderr

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
    return {"job": job, "container": container}


def test_the_kubernetes_job_runs_one_gpu_worker_per_pod(hpsearch) -> None:
    found = _worker(CLUSTER / "kubernetes" / "job.yaml")
    argv = found["container"]["args"]
    _run_flags(argv, hpsearch)
    assert "--total" in argv  # pods share one budget
    assert found["job"]["spec"]["parallelism"] >= 1


def test_the_indexed_kubernetes_job_packs_trials_on_each_pod_s_gpu(hpsearch) -> None:
    found = _worker(CLUSTER / "kubernetes" / "job-indexed.yaml")
    spec = found["job"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 1
    script = found["container"]["args"][0]
    argv = shlex.split(script.split("exec hpsearch", 1)[1])
    _run_flags(argv, hpsearch)
    assert argv[argv.index("--trials-per-gpu") + 1] == "4" and "--total" in argv


def test_the_slurm_array_script_passes_its_arguments_and_signals_on(tmp_path: Path, hpsearch) -> None:
    """Run the script with a stand-in ``hpsearch`` that records its arguments and waits: SIGTERM to the batch
    shell (what ``--signal=B:TERM`` sends) must reach the worker, and the script exits with its status."""
    script = CLUSTER / "slurm" / "hpsearch.sbatch"
    text = script.read_text()
    directives = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "--gpus-per-task=1" in directives and any(d.startswith("--array=") for d in directives)
    assert any(d.startswith("--signal=B:TERM") for d in directives)
    fake = tmp_path / "bin" / "hpsearch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/argv\ntrap 'echo TERM > {tmp_path}/got; exit 143' "
                    "TERM\nwhile true; do sleep 0.1; done\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "HPSEARCH_STORAGE": "sqlite:///x.db",
           "HOME": str(tmp_path)}
    proc = subprocess.Popen(["bash", str(script), "space.yaml", "20", "--trials-per-gpu", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "argv").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert (tmp_path / "got").read_text().strip() == "TERM" and proc.returncode == 143
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:5] == ["run", "--space", "space.yaml", "--total", "20"] and argv[-2:] == ["--trials-per-gpu", "2"]
    _run_flags(argv, hpsearch)
    missing = subprocess.run(["bash", str(script), "space.yaml"], env={**env, "HPSEARCH_STORAGE": ""},
                             capture_output=True, text=True, timeout=20)
    assert missing.returncode != 0 and "HPSEARCH_STORAGE" in missing.stderr

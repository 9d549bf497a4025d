"""The rules of a run, decided before anything is written: each refusal through the CLI is one line with its exit
code (2 for the user's input, 1 for what only the machine can say) and leaves no study behind; every problem is
gathered at once; and the rules themselves are plain code, checked here against machines stated as data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpsearch.config.load import load_space
from hpsearch.config.options import RunOptions, flag_names
from hpsearch.config.rules import EXTRAS, Machine, RayCluster, RunRefused, decide_run, decide_train

EVERYTHING = frozenset(EXTRAS)
"""A machine with every optional package."""


def _refused(res, code: int, *expected: str) -> str:
    """The refusal's one line: the exit code, what it says, no traceback."""
    assert res.returncode == code, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _no_study(tmp_path: Path) -> None:
    """Nothing was written: no study file (the default storage is ./studies.db), no artifacts."""
    assert not (tmp_path / "studies.db").exists()
    assert not any(tmp_path.glob("*-artifacts"))


def test_keep_best_with_several_objectives_creates_no_study(make_space, hpsearch, tmp_path: Path) -> None:
    two = make_space("two.yaml", study__metrics=["accuracy", "latency_ms"], study__metric=None,
                     study__pruner={"name": "none"})
    res = hpsearch("run", "--space", str(two), "--trials", "1", "--keep-best", "2")
    _refused(res, 2, "--keep-best with study.metrics", "--pareto")
    _no_study(tmp_path)
    # the leftover study that used to block a single-objective run of the same name is not there
    hpsearch("run", "--space", str(make_space()), "--trials", "1", "--quiet", check=True)


def test_ray_without_ray_installed_is_the_machine_s_problem(make_space, hpsearch, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hpsearch.study.machine.installed", lambda: EVERYTHING - {"ray"})
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--ray")
    _refused(res, 1, "--ray needs ray, which is not installed", "pip install 'hpsearch[ray]'")
    _no_study(tmp_path)


def test_an_unreachable_ray_address_is_one_line(make_space, hpsearch, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--ray", "ray://127.0.0.1:1")
    _refused(res, 1, "--ray ray://127.0.0.1:1: cannot reach the Ray cluster: nothing answers at 127.0.0.1:1")
    _no_study(tmp_path)


def test_a_gpu_the_machine_lacks_is_refused_naming_the_visible_ones(make_space, hpsearch, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--gpus", "7")
    _refused(res, 2, "--gpus 7: 7 is not a GPU this machine has; no GPU is visible")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--gpus", "0,7")
    _refused(res, 2, "--gpus 0,7: 7 is not a GPU", "the visible GPUs are 0, 1 (CUDA_VISIBLE_DEVICES unset)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a listed GPU that CUDA cannot find is not visible
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    res = hpsearch("run", "--space", str(make_space()), "--trials", "1", "--gpus", "5")
    _refused(res, 2, "the visible GPUs are 3 (CUDA_VISIBLE_DEVICES=3,5)")
    _no_study(tmp_path)


def test_fsdp_without_gpus_per_trial_is_refused(make_space, hpsearch, tmp_path: Path) -> None:
    res = hpsearch("run", "--space", str(make_space(model__distributed="fsdp")), "--trials", "1")
    _refused(res, 2, "model.distributed: fsdp shards a trial over the processes of --gpus-per-trial K")
    _no_study(tmp_path)


def test_every_problem_is_named_at_once_and_python_names_keywords(make_space, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import hpsearch

    monkeypatch.chdir(tmp_path)
    two = make_space("two.yaml", study__metrics=["accuracy", "latency_ms"], study__metric=None,
                     study__pruner={"name": "none"}, model__distributed="fsdp")
    with pytest.raises(RunRefused) as refused:
        hpsearch.run(two, trials=1, keep_best=2, warm_start="old", heartbeat_interval=10, grace_period=5)
    text = str(refused.value)
    assert text.startswith("the run cannot start (4 problems):") and refused.value.exit_code == 2
    for part in ("grace_period 5: must be longer than heartbeat_interval 10", "keep_best with study.metrics",
                 "model.distributed: fsdp shards", "warm_start old: warm starts take"):
        assert part in text, part
    _no_study(tmp_path)


def _machine(**facts) -> Machine:
    return Machine(**{"packages": EVERYTHING, **facts})


@pytest.mark.parametrize("options, machine, expected, code", [
    (dict(workers=2, device="cuda"), _machine(), "--device cuda: no CUDA device is available", 1),
    (dict(device="cuda:2"), _machine(gpus=("0", "1")), "--device cuda:2: this machine has 2 GPU(s)", 1),
    (dict(trials_per_gpu=2), _machine(), "--trials-per-gpu 2: no GPU is visible (CUDA_VISIBLE_DEVICES unset)", 2),
    (dict(gpus_per_trial=4), _machine(gpus=("0", "1")), "--gpus-per-trial 4: only 2 GPU(s) visible (0,1)", 2),
    (dict(workers=3, gpus_per_trial=2), _machine(gpus=("0", "1", "2", "3")), "needs 6 GPUs, 4 visible", 2),
    (dict(workers=8, storage="sqlite:///x.db"), _machine(), "--workers 8 on SQLite: use at most 4", 2),
    (dict(mlflow=""), _machine(), "--mlflow: give a tracking URI", 2),
    (dict(mlflow="file:m"), _machine(mlflow_store="bad store"), "--mlflow file:m: bad store", 2),
    (dict(mlflow="sqlite:///m.db"), _machine(packages=frozenset()), "--mlflow needs mlflow", 1),
    (dict(wandb=""), _machine(packages=frozenset()), "--wandb needs wandb", 1),
    (dict(ray="", device="cuda"), _machine(ray=RayCluster("a local Ray")), "the Ray cluster (a local Ray) has no GPU",
     1),
    (dict(ray="", trials_per_gpu=4), _machine(ray=RayCluster("h:1", gpus=0)), "--trials-per-gpu 4 with --ray", 1),
])
def test_what_a_machine_refuses(make_space, options: dict, machine: Machine, expected: str, code: int) -> None:
    space = load_space(make_space())
    with flag_names(), pytest.raises(RunRefused) as refused:
        decide_run(space, RunOptions(trials=1, **options), machine)
    assert expected in str(refused.value) and refused.value.exit_code == code, str(refused.value)


def test_what_a_plan_places(make_space) -> None:
    space = load_space(make_space())
    here = decide_run(space, RunOptions(trials=1), _machine(gpus=("0",)))
    assert here.launcher == "here" and here.slots == ()
    packed = decide_run(space, RunOptions(trials=1, trials_per_gpu=2), _machine(gpus=("4",)))
    assert [(s.gpu, s.memory_fraction) for s in packed.slots] == [("4", 0.5), ("4", 0.5)]
    assert packed.slots[0].env({})["HPSEARCH_GPU_MEMORY_FRACTION"] == "0.5"
    listed = decide_run(space, RunOptions(trials=1, gpus=["1"], workers=2), _machine(gpus=("0", "1")))
    assert [s.gpu for s in listed.slots] == ["1", "1"]
    ray = decide_run(space, RunOptions(trials=1, ray="", workers=3, gpus_per_trial=2),
                     _machine(ray=RayCluster("h", gpus=8)))
    assert ray.launcher == "ray" and [s.ray_gpus for s in ray.slots] == [2.0] * 3
    cpu = decide_run(space, RunOptions(trials=1, ray="", workers=2), _machine(ray=RayCluster("h", gpus=0)))
    assert [s.ray_gpus for s in cpu.slots] == [0.0, 0.0]
    resolved = decide_run(space, RunOptions(trials=1, mlflow="", wandb=""),
                          _machine(environ={"MLFLOW_TRACKING_URI": "sqlite:///m.db", "WANDB_PROJECT": "p"}))
    assert (resolved.options.mlflow, resolved.options.wandb) == ("sqlite:///m.db", "p")


def test_what_a_model_needs_of_the_machine(make_space) -> None:
    quantized = load_space(make_space(model__quantization="8bit", fixed__lora_r=8))
    with pytest.raises(RunRefused, match="bitsandbytes quantization needs a CUDA GPU .the device is cpu") as refused:
        decide_run(quantized, RunOptions(trials=1, device="cpu"), _machine())
    assert refused.value.exit_code == 1
    with pytest.raises(RunRefused, match="needs a CUDA GPU .no GPU is visible .CUDA_VISIBLE_DEVICES=-1"):
        decide_train(quantized.with_params({"learning_rate": 1e-3, "dropout": 0.0}), "auto", False,
                     _machine(listed="-1"))
    with pytest.raises(RunRefused, match="model.quantization 8bit needs bitsandbytes, which is not installed"):
        decide_run(quantized, RunOptions(trials=1), _machine(gpus=("0",), packages=frozenset()))
    flash = load_space(make_space(model__attn_implementation="flash_attention_2"))
    with pytest.raises(RunRefused, match="flash_attention_2 needs flash-attn, which is not installed: pip install "
                                         "flash-attn"):
        decide_run(flash, RunOptions(trials=1), _machine(packages=frozenset()))
    searched = load_space(make_space())
    with pytest.raises(RunRefused, match="still searched") as refused:
        decide_train(searched, "auto", True, _machine())
    assert "--adapter-only needs fixed.lora_r > 0" in str(refused.value) and refused.value.exit_code == 2


def test_the_rules_import_no_torch() -> None:
    code = ("import sys; import hpsearch.config.rules, hpsearch.config.placement, hpsearch.config.sections; "
            "print(sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

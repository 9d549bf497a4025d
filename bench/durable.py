"""Durable trials (#43): what a stopped trial costs once it is continued from its checkpoint, what checkpointing costs
a study, and how big a checkpoint is.

    python -m bench.durable --out bench/results/DURABLE.md     # MiniLM on SST-2 (the demo's model and data)
    python -m bench.durable --reduced --out /tmp/durable.md    # toy sizes (a test's run)

Scenarios, each a fresh `hpsearch run` process as a worker is, on one enqueued config of 4 epochs (no pruner):
- **uninterrupted**: the trial's time and value;
- **SIGKILL after 3 of 4 epochs**: the worker killed once its checkpoint at the end of epoch 3 is named; a second
  worker (`--total 1`, 1 s heartbeats, 3 s grace) fails the trial and finishes its retry from the checkpoint;
- **SIGTERM after 2 of 4 epochs**: the worker stopped once its epoch-2 checkpoint is named (it saves again at the
  next step and exits 143); the same command continues the trial.
The continuation's own duration is set against the uninterrupted trial's (the issue's targets: <= 0.45x after a
kill at 3 of 4 epochs, <= 0.7x after a stop at 2 of 4), values compared to 1e-6; a worker's whole time (start-up,
the grace period) is given beside it. Then the demo study (`lr_dropout.yaml`, `--keep-best 2`) with checkpoints
off and on, same seed and configs: its time, and the most checkpoint files its artifact store held at once; and the
size of a full MiniLM and of a LoRA (r 8) trial's checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import MODEL, REPO, RESULTS, machine, now, write_result

SPACE = REPO / "search_spaces" / "lr_dropout.yaml"
CONFIG = {"learning_rate": 1.0e-4, "dropout": 0.1}


def _hpsearch(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _sets(reduced: bool) -> list[str]:
    """The scenario's config: one enqueued trial of 4 epochs, no pruner."""
    rows = ("200", "64") if reduced else ("1000", "200")
    return ["--set", f"model.name_or_path={MODEL}", "--set", f"data.train.path={REPO}/data/sst2/train.tsv",
            "--set", f"data.validation.path={REPO}/data/sst2/dev.tsv", "--set", f"data.max_train_samples={rows[0]}",
            "--set", f"data.max_eval_samples={rows[1]}", "--set", "fixed.epochs=4", "--set", "study.pruner=none",
            "--set", f"study.enqueue=[{json.dumps(CONFIG)}]"]


def _trials(url: str) -> list[Any]:
    import optuna

    try:
        return optuna.load_study(study_name="sst2-lr-dropout", storage=url).get_trials(deepcopy=False)
    except KeyError:
        return []


def _wait_for_checkpoint(url: str, proc: subprocess.Popen, epochs: float) -> dict:
    """Poll until trial 0 names a checkpoint at ``epochs`` epochs or more; return its pointer."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker ended before its checkpoint: {proc.stderr.read()[-2000:]}")
        for t in _trials(url):
            pointer = t.system_attrs.get("hpsearch:checkpoint")
            if pointer and json.loads(pointer)["epochs"] >= epochs - 1e-9:
                return json.loads(pointer)
        time.sleep(0.05)


def _duration(trial: Any) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def scenarios(work: Path, reduced: bool) -> dict:
    """The three scenarios: times, values, where the continuations resumed."""
    out: dict[str, Any] = {}
    base = ["run", "--space", str(SPACE), *_sets(reduced), "--quiet", "--heartbeat-interval", "1",
            "--grace-period", "3"]
    url = f"sqlite:///{work}/whole.db"
    t0 = time.perf_counter()
    assert _hpsearch([*base, "--trials", "1", "--storage", url], work).wait() == 0
    whole = _trials(url)[0]
    out["uninterrupted"] = {"trial_s": _duration(whole), "worker_s": time.perf_counter() - t0, "value": whole.value,
                            "eval_loss": whole.user_attrs["val_eval_loss"]}
    for name, sig, at in (("sigkill_after_3_of_4", signal.SIGKILL, 3.0), ("sigterm_after_2_of_4", signal.SIGTERM, 2.0)):
        url = f"sqlite:///{work}/{name}.db"
        victim = _hpsearch([*base, "--trials", "1", "--storage", url], work)
        pointer = _wait_for_checkpoint(url, victim, at)
        victim.send_signal(sig)
        code = victim.wait(timeout=300)
        t0 = time.perf_counter()
        again = ["--total", "1"] if sig == signal.SIGKILL else ["--trials", "1"]  # a new worker, or the same command
        assert _hpsearch([*base, *again, "--storage", url], work).wait() == 0
        worker_s = time.perf_counter() - t0
        trials = _trials(url)
        done = next(t for t in trials if t.state.name == "COMPLETE")
        out[name] = {"exit": code, "checkpoint_at": pointer, "resumed_from": done.user_attrs.get("resumed_from"),
                     "continuation_s": _duration(done), "worker_s": worker_s, "value": done.value,
                     "eval_loss": done.user_attrs["val_eval_loss"],
                     "ratio": _duration(done) / out["uninterrupted"]["trial_s"],
                     "same_value": abs(done.value - whole.value) <= 1e-6
                     and abs(done.user_attrs["val_eval_loss"] - whole.user_attrs["val_eval_loss"]) <= 1e-6}
        print(name, out[name], file=sys.stderr, flush=True)
    return out


def overhead(work: Path, reduced: bool, trials: int) -> dict:
    """The demo study with checkpoints off and on (same seed, same configs): times, checkpoint files at most."""
    out: dict[str, Any] = {}
    sets = ["--set", f"model.name_or_path={MODEL}", "--set", f"data.train.path={REPO}/data/sst2/train.tsv",
            "--set", f"data.validation.path={REPO}/data/sst2/dev.tsv"]
    if reduced:
        sets += ["--set", "data.max_train_samples=200", "--set", "data.max_eval_samples=64"]
    for side, every in (("off", "0"), ("on", None), ("off_again", "0")):
        db = work / f"demo_{side}.db"
        args = ["run", "--space", str(SPACE), *sets, "--trials", str(trials), "--quiet", "--keep-best", "2",
                "--storage", f"sqlite:///{db}", *(["--checkpoint-every-s", every] if every else [])]
        store = work / f"demo_{side}-artifacts"
        most, stop = [0, 0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                if store.is_dir():
                    files = [p for p in store.rglob("*") if p.is_file()]
                    running = sum(t.state.name == "RUNNING" for t in _trials(f"sqlite:///{db}"))
                    most[0] = max(most[0], len(files))
                    most[1] = max(most[1], running)
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        assert _hpsearch(args, work).wait() == 0
        wall = time.perf_counter() - t0
        stop.set()
        watcher.join()
        done = _trials(f"sqlite:///{db}")
        out[side] = {"wall_s": wall, "trials_s": sum(_duration(t) for t in done if t.datetime_complete),
                     "states": [t.state.name for t in done], "values": [t.value for t in done],
                     "files_at_most": most[0], "running_at_most": most[1],
                     "files_after": len([p for p in store.rglob("*") if p.is_file()]) if store.is_dir() else 0,
                     "saved": sum(t.user_attrs.get("checkpoints_saved", 0) for t in done)}
        print(side, {k: v for k, v in out[side].items() if k not in ("values", "states")}, file=sys.stderr,
              flush=True)
    return out


def lora_size(work: Path, reduced: bool) -> int:
    """The bytes of a LoRA (r 8) MiniLM trial's checkpoint."""
    url = f"sqlite:///{work}/lora.db"
    args = ["run", "--space", str(SPACE), *_sets(True), "--set", "fixed.lora_r=8", "--set", "fixed.epochs=1",
            "--trials", "1", "--quiet", "--storage", url]
    assert _hpsearch(args, work).wait() == 0
    return json.loads(_trials(url)[0].system_attrs["hpsearch:checkpoint"])["bytes"]


def report(raw: dict) -> list[str]:
    s, o = raw["scenarios"], raw["overhead"]
    whole = s["uninterrupted"]
    lines = [f"# Durable trials: stopped trials continued, and what checkpoints cost ({raw['when']})", "",
             f"Host: {raw['machine']}. Command: `{raw['command']}`. One enqueued config of the demo space "
             f"(MiniLM, SST-2, {raw['rows']}), 4 epochs of 4 reports, no pruner; every side a fresh `hpsearch run` "
             "process, nothing else running.", "",
             "| scenario | worker exit | resumed from (step, epochs) | the continuation's trial time | against "
             "uninterrupted (target) | the next worker, start to end | value, eval loss | same as uninterrupted |",
             "|---|---|---|---|---|---|---|---|",
             f"| uninterrupted | 0 | - | {whole['trial_s']:.1f} s | 1.00x | {whole['worker_s']:.1f} s | "
             f"{whole['value']:.4f}, {whole['eval_loss']:.6f} | - |"]
    for name, target in (("sigkill_after_3_of_4", "0.45"), ("sigterm_after_2_of_4", "0.7")):
        r = s[name]
        resumed = r["resumed_from"] or {}
        lines.append(f"| {name.replace('_', ' ')} | {r['exit']} | {resumed.get('step')}, {resumed.get('epochs')} | "
                     f"{r['continuation_s']:.1f} s | **{r['ratio']:.2f}x** (<= {target}) | {r['worker_s']:.1f} s | "
                     f"{r['value']:.4f}, {r['eval_loss']:.6f} | {'yes' if r['same_value'] else 'NO'} |")
    off, on = o["off"], o["on"]
    off_mean = (o["off"]["wall_s"] + o["off_again"]["wall_s"]) / 2
    lines += ["", "The next worker's time includes its start-up and, after a kill, the grace period before the dead "
              "trial is failed (3 s here; 180 s by default).", "",
              f"## Checkpointing a study: the demo, {raw['trials']} trials, `--keep-best 2`", "",
              "| checkpoints | study wall time | trials' own time | checkpoints written | files in the store at "
              "most (running trials at most) | files after |", "|---|---|---|---|---|---|"]
    for label, r in (("off (`--checkpoint-every-s 0`)", off), ("on (default)", on),
                     ("off again", o["off_again"])):
        lines.append(f"| {label} | {r['wall_s']:.1f} s | {r['trials_s']:.1f} s | {r['saved']} | "
                     f"{r['files_at_most']} ({r['running_at_most']}) | {r['files_after']} |")
    same = o["off"]["values"] == o["on"]["values"]
    lines += ["", f"Overhead: **{100 * (on['wall_s'] / off_mean - 1):+.1f} %** of the study's wall time against the "
              f"mean of the two runs without (target <= 5 %); the runs without differ by "
              f"{100 * abs(o['off']['wall_s'] / o['off_again']['wall_s'] - 1):.1f} % from each other. The same "
              f"configs and values with and without: {'yes' if same else 'NO'}. A kept model is one file "
              "(`model.tar` in the store's layout); the rest are checkpoints, one per running trial.", "",
              f"Checkpoint sizes: a full MiniLM trial {raw['full_bytes'] / 1e6:.1f} MB (trainable weights with the "
              f"shrunk vocabulary, AdamW's two moments, the best checkpoint's weights); a LoRA (r 8) trial "
              f"{raw['lora_bytes'] / 1e6:.2f} MB (adapters and head only)."]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="toy sizes, a test's run")
    ap.add_argument("--trials", type=int, default=None, help="trials of the demo study per side (12; reduced 2)")
    ap.add_argument("--out", default=str(RESULTS / "DURABLE.md"))
    args = ap.parse_args(argv)
    trials = args.trials or (2 if args.reduced else 12)
    with tempfile.TemporaryDirectory(prefix="hpsearch-durable-") as tmp:
        work = Path(tmp)
        raw = {"when": now(), "machine": machine(), "reduced": args.reduced, "trials": trials,
               "rows": "200 training rows, 64 validation" if args.reduced else "1,000 training rows, 200 validation",
               "command": "python -m bench.durable" + (" --reduced" if args.reduced else ""),
               "scenarios": scenarios(work, args.reduced)}
        raw["full_bytes"] = raw["scenarios"]["sigterm_after_2_of_4"]["checkpoint_at"]["bytes"]
        raw["overhead"] = overhead(work, args.reduced, trials)
        raw["lora_bytes"] = lora_size(work, args.reduced)
    write_result(args.out, report(raw), raw, "durable.json")


if __name__ == "__main__":
    main()

"""The conditional LoRA space against the same space without ``when:``: does a search that never samples LoRA keys
for full fine-tuning trials reach the unconditional search's best in no more trials?

    python -m bench.conditional --seeds 0,1,2 --trials 20 --out bench/results/CONDITIONAL.md

Both searches run ``search_spaces/lora.yaml`` (all-MiniLM-L6-v2, SST-2) with smaller data and one epoch so that
the whole comparison fits a CPU session (``--set`` overrides below), on the same sampler seeds, one after the
other. Per seed: each search's best, the trial at which each first reached the unconditional search's best
(within 0.002), and how many full fine-tuning trials sampled LoRA keys (the conditional one: none, by design).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS, machine, now, write_result

OVERRIDES = {"data.max_train_samples": 600, "data.max_eval_samples": 300, "fixed.epochs": 1}
TOLERANCE = 0.002


def search(conditional: bool, seed: int, trials: int, work: Path) -> list[dict[str, Any]]:
    import optuna

    import hpsearch
    from hpsearch.config.load import load_space

    space = load_space(REPO / "search_spaces" / "lora.yaml", {**OVERRIDES, "study.sampler.seed": seed})
    raw = space.to_dict()
    if not conditional:
        raw.pop("when")
        raw["fixed"]["lora_dropout"] = 0.05
        raw["study"]["enqueue"] = [{"lora_r": 0, "learning_rate": 1e-4, "lora_alpha": 16,
                                    "lora_target_modules": "all-linear"}, raw["study"]["enqueue"][1]]
    raw["study"]["name"] = f"{'cond' if conditional else 'flat'}-{seed}"
    study = hpsearch.run(raw, trials=trials, storage=f"sqlite:///{work / 'c.db'}", device="cpu")
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params})
    optuna.delete_study(study_name=study.study_name, storage=f"sqlite:///{work / 'c.db'}")
    return rows


def first_reaching(rows: list[dict[str, Any]], target: float) -> int | None:
    best = None
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None and r["value"] >= target - TOLERANCE:
            best = r["number"] + 1
            break
    return best


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "CONDITIONAL.md"))
    a = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-cond-") as tmp:
        for seed in (int(s) for s in a.seeds.split(",")):
            cond, flat = search(True, seed, a.trials, Path(tmp)), search(False, seed, a.trials, Path(tmp))
            runs.append({"seed": seed, "conditional": cond, "unconditional": flat})
            print(f"[conditional] seed {seed} done", file=sys.stderr, flush=True)
    lines = ["# Conditional LoRA space (`when: lora_r > 0`) against the same space without conditions", "",
             f"- date: {now()}", f"- machine: {machine()}",
             f"- command: `python -m bench.conditional {' '.join(argv)}`",
             f"- overrides: `{OVERRIDES}`; {a.trials} trials per search; reached = first trial within {TOLERANCE} of "
             "the unconditional search's best", "",
             "| sampler seed | best: conditional | unconditional | trials to reach the unconditional best: "
             "conditional | unconditional | full fine-tuning trials with LoRA keys: conditional | unconditional |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        c, u = r["conditional"], r["unconditional"]
        best = lambda rows: max((x["value"] for x in rows if x["state"] == "COMPLETE"), default=float("nan"))  # noqa
        target = best(u)
        lora_keys = lambda rows: sum(x["params"].get("lora_r") == 0 and "lora_alpha" in x["params"] for x in rows)  # noqa
        lines.append(f"| {r['seed']} | {best(c):.4f} | {target:.4f} | {first_reaching(c, target) or 'not reached'} | "
                     f"{first_reaching(u, target)} | {lora_keys(c)} | {lora_keys(u)} |")
    write_result(a.out, lines, runs, "conditional.json")


if __name__ == "__main__":
    main()

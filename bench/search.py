"""Search benchmark: whole studies side by side, hpsearch and the anchor study, per sampler seed, on one machine.

    python -m bench.search --seeds 0,1,2               # SST-2, the anchor's space: writes bench/results/SEARCH.md

For each seed it runs the anchor (``../shared/bench/anchor_search.py``, unchanged: HF Trainer.hyperparameter_search
with TPE and MedianPruner) and ``hpsearch run`` on the same space (``--space``, default
bench/configs/search_space.yaml),
data rows and sampler seed, one after the other. Then, for each study's chosen config (the anchor's best trial;
hpsearch's choice, which with ``study.confirm`` is the best confirmed score, and its best trial by value beside it
when the two differ), it retrains from the config ``--retrain-seeds`` times and measures accuracy on held-out rows
that neither training nor validation used (the train file's rows after the training rows), so a search that only found
validation noise shows. It writes a markdown report, the raw numbers (JSON) and one figure: best-so-far validation
accuracy against wall time, every run. Any data in the anchor's TSV layout (label, text; a header line) works.

The anchor's trials all ran with dropout 0.1 and no frozen layers (transformers 5 calls its model_init before
the parameters are suggested; bench/README.md), so its chosen config is retrained as it ran. Both chosen configs
are retrained by hpsearch's loop, so the held-out comparison measures the configs, not the two training loops
(whose accuracy agrees over seeds: bench/results/SEEDS.md).

Lever runs: ``--set KEY=VALUE`` changes hpsearch's space (e.g. ``--set study.pruner.options.n_warmup_steps=4``),
``--anchor-json FILE`` reuses anchor runs of an earlier invocation instead of running them again (exploration
only: the targets are read from a run that ran both). ``--validation-from-train`` validates on train-file rows
(after the held-out ones) instead of ``--validation``, so validation and held-out rows share a distribution.
``--warm-start STUDY`` starts every hpsearch study with the best configs of an earlier study in
``<workdir>/search.db`` (another dataset's: bench/README.md gives the command that runs one); the report says
what it cost and gives the ratio with that time counted too.
Second dataset: ``python -m bench.bbc_news`` writes BBC News business/politics TSVs for ``--train`` / ``--validation``.
``--report-only JSON`` runs nothing and rewrites an earlier invocation's report and figure from its raw results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import CONFIGS, MODEL, RAW, REPO, RESULTS, machine, now, read_rows, require, shared, write_tsv

ANCHOR_NAMES = {"per_device_train_batch_size": "batch_size", "num_train_epochs": "epochs",
                "lr_scheduler_type": "scheduler"}
ANCHOR_AS_RUN = {"dropout": 0.1, "num_frozen_layers": 0}


def parse_args(argv: list[str] | None = None, run: bool = True) -> argparse.Namespace:
    """The benchmark's arguments (``argv``, default the command line), every path resolved, the workdir made;
    ``run``: the files a run reads are checked (and the validation rows taken from the train file, if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(CONFIGS / "search_space.yaml"))
    ap.add_argument("--train", default=shared("data/sst2/train.tsv"))
    ap.add_argument("--validation", default=shared("data/sst2/dev.tsv"))
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--heldout", type=int, default=2000, help="held-out rows: the train file's rows after --n-train")
    ap.add_argument("--validation-from-train", action="store_true",
                    help="validate on the train file's --n-eval rows after the held-out ones (one distribution for "
                         "training, validation and held-out) instead of --validation")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=20, help="trials per anchor study")
    ap.add_argument("--hp-trials", type=int, default=None, help="trials per hpsearch study (default: --trials)")
    ap.add_argument("--retrain-seeds", type=int, default=3, help="retrains of each chosen config (training seeds)")
    ap.add_argument("--anchor", default=shared("bench/anchor_search.py"))
    ap.add_argument("--anchor-json", default=None, help="reuse the anchor runs recorded in this earlier JSON")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warm-start", default=None, metavar="STUDY",
                    help="hpsearch runs with --warm-start STUDY: an earlier study in <workdir>/search.db (another "
                         "dataset's, say), whose best configs it enqueues first")
    ap.add_argument("--workers", type=int, default=1,
                    help="hpsearch runs with --workers N: N local worker processes on one study, the CPU cores "
                         "split between them (the anchor runs one study process, as Trainer does)")
    ap.add_argument("--label", default="hpsearch")
    ap.add_argument("--out", default=str(RESULTS / "SEARCH.md"))
    ap.add_argument("--json", default=None, help="raw results (default: bench/results/raw/<out stem>.json)")
    ap.add_argument("--plot", default=None, help="figure, .png or .html (default: bench/results/<out stem>.png)")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out"))
    ap.add_argument("--report-only", metavar="JSON", default=None,
                    help="run nothing: rewrite the report and figure of the earlier invocation whose raw results "
                         "are in JSON (after a change to how the report reads them)")
    a = ap.parse_args(argv)
    run = run and not a.report_only
    if run:
        for key, flag in (("train", "--train"), ("validation", "--validation"), ("model", "--model")):
            require(getattr(a, key), f"the {key} data" if key != "model" else "the model (make models)", flag)
        if not a.anchor_json:
            require(a.anchor, "the anchor study script", "--anchor")
    for key in ("space", "train", "validation", "model", "anchor", "out", "workdir"):
        setattr(a, key, str(Path(getattr(a, key)).resolve()))
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    a.validation_source = f"{a.validation} rows 1-{a.n_eval}"
    if a.validation_from_train:
        start = a.n_train + a.heldout
        a.validation_source = f"{a.train} rows {start + 1}-{start + a.n_eval}"
        if not run:
            return a
        header, rows = read_rows(a.train, start, start + a.n_eval)
        if len(rows) < a.n_eval:
            sys.exit(f"{a.train}: only {len(rows)} rows after the first {start} (--validation-from-train)")
        a.validation = str(write_tsv(Path(a.workdir) / "validation-from-train.tsv", header, rows))
    return a


def earlier_run(json_path: str, run: bool = True) -> tuple[dict, argparse.Namespace]:
    """The raw results of an earlier invocation and the arguments it ran with (for heldout.py, chosen_spread.py;
    ``run=False`` to rewrite its report without its data)."""
    raw = json.loads(Path(json_path).read_text())
    return raw, parse_args(raw["argv"], run=run)


# ---------------------------------------------------------------------------------------------------------------
# The two studies.


def run_anchor(a: argparse.Namespace, seed: int, work: Path) -> dict:
    out = work / f"anchor-s{seed}.json"
    cmd = [sys.executable, a.anchor, "--train", a.train, "--eval", a.validation, "--model", a.model,
           "--n-train", str(a.n_train), "--n-eval", str(a.n_eval), "--trials", str(a.trials), "--seed", str(seed),
           "--out", str(out), "--max-length", str(a.max_length)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    done = [(v, p) for v, p, s in zip(res["values"], res["params"], res["states"]) if s == "COMPLETE" and v is not None]
    best_params = max(done, key=lambda vp: vp[0])[1]
    res["chosen"] = {ANCHOR_NAMES.get(k, k): v for k, v in best_params.items()}
    res["pruned"] = res["states"].count("PRUNED")
    return res


def space_overrides(a: argparse.Namespace, seed: int) -> list[str]:
    """The data rows and sampler seed the anchor uses, then the user's lever overrides."""
    train_col = read_rows(a.train, 0, 0)[0][1]
    eval_col = read_rows(a.validation, 0, 0)[0][1]
    label = read_rows(a.train, 0, 0)[0][0]
    return [f"data.train={json.dumps({'path': a.train, 'text_column': train_col, 'format': 'tsv'})}",
            f"data.validation={json.dumps({'path': a.validation, 'text_column': eval_col, 'format': 'tsv'})}",
            f"data.label_column={label}", f"data.max_train_samples={a.n_train}",
            f"data.max_eval_samples={a.n_eval}", f"model.name_or_path={a.model}",
            f"model.max_length={a.max_length}", f"study.sampler.seed={seed}", *a.overrides]


def run_hpsearch(a: argparse.Namespace, seed: int, work: Path) -> dict:
    import optuna

    storage = f"sqlite:///{work / 'search.db'}"
    name = f"{a.label}-s{seed}"
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    cmd = [sys.executable, "-m", "hpsearch", "run", "--space", a.space, "--trials", str(a.hp_trials or a.trials),
           "--storage", storage, "--study-name", name, "--quiet"]
    if a.warm_start:
        cmd += ["--warm-start", a.warm_start]
    if a.workers > 1:
        cmd += ["--workers", str(a.workers)]
    for o in space_overrides(a, seed):
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=storage)
    trials = sorted(study.trials, key=lambda t: t.datetime_complete or t.datetime_start)
    start = min(t.datetime_start for t in trials)
    best, t_best, curve = -1.0, None, []
    for t in trials:
        if t.datetime_complete is None:
            continue
        at = (t.datetime_complete - start).total_seconds()
        if t.state.name == "COMPLETE" and t.value > best:
            best, t_best = t.value, at
        curve.append((at, best))
    from hpsearch.study.record import confirmations, ranked_trials

    chosen = ranked_trials(study)[0]  # by the confirmed score when study.confirm ran
    by_value = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    states = [t.state.name for t in trials]
    confirmed = confirmations(study)
    return {"search_s": curve[-1][0], "wall_s": wall, "best": best, "time_to_best_s": t_best, "curve": curve,
            "chosen": chosen.params, "chosen_trial": chosen.number, "pruned": states.count("PRUNED"),
            "by_value": by_value.params, "by_value_trial": by_value.number,
            "confirmed": {str(n): c for n, c in confirmed.items()},
            "confirm_s": sum(c["seconds"] for c in confirmed.values()),
            "states": states, "study": name, "storage": storage}


def prior_study(a: argparse.Namespace) -> dict:
    """What ``--warm-start`` drew on: the earlier study's data, size, wall time and the configs it hands over."""
    import optuna

    from hpsearch.config.load import load_space
    from hpsearch.study.record import trial_config
    from hpsearch.study.runner import warm_start_params

    storage = f"sqlite:///{Path(a.workdir) / 'search.db'}"
    study = optuna.load_study(study_name=a.warm_start, storage=storage)
    done = [t for t in study.trials if t.datetime_complete is not None]
    config = trial_config(study, study.best_trial)
    space = load_space(a.space, space_overrides(a, 0))
    return {"study": a.warm_start, "trials": len(done), "best": study.best_value,
            "wall_s": (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds(),
            "train": config["data"]["train"]["path"],
            "enqueued": warm_start_params(storage, a.warm_start, space)}


def time_to_reach(curve: list, target: float) -> float | None:
    """The first time a best-so-far curve reaches ``target``, or None.

    Accuracies are k / n rows; the anchor's are exact, hpsearch's were float32 before 2026-11-26 (471 / 500 came
    out 0.94199997), so the comparison allows 1e-6, far below one row (1 / n)."""
    return next((t for t, best in curve if best >= target - 1e-6), None)


# ---------------------------------------------------------------------------------------------------------------
# Held-out accuracy of a chosen config.


def heldout_accuracy(a: argparse.Namespace, chosen: dict, heldout: Path, as_anchor: bool,
                     columns_from: str = "train") -> list[float]:
    """Retrain ``chosen`` (the search's data and settings) once per training seed; accuracy on ``heldout`` each.
    ``heldout`` has the columns of the ``columns_from`` source (``train`` or ``validation``)."""
    return retrain_scores(a, chosen, {"heldout": (heldout, columns_from)}, as_anchor,
                          list(range(a.retrain_seeds)))["heldout"]


def retrain_scores(a: argparse.Namespace, chosen: dict, sets: dict[str, tuple[Path, str]], as_anchor: bool,
                   seeds: list[int]) -> dict[str, list[float]]:
    """Retrain ``chosen`` once per training seed in ``seeds``; accuracy on each named row set, a file with the
    columns of the ``train`` or ``validation`` source (``sets``: name -> (path, source))."""
    from hpsearch.config.files import apply_overrides, read_yaml
    from hpsearch.config.validation import validate
    from hpsearch.finetune.data import prepare as tokenize
    from hpsearch.finetune.evaluation import evaluate
    from hpsearch.finetune.model import load_tokenizer
    from hpsearch.finetune.recipe import fine_tune, prepare

    raw = apply_overrides(read_yaml(a.space), space_overrides(a, 0))
    if as_anchor:  # Trainer reported its last evaluation and trained what it ran
        raw = apply_overrides(raw, ["study.trial_value=last", "study.early_stopping=null"])
        chosen = {**chosen, **ANCHOR_AS_RUN}
    base = validate(raw, source=a.space)
    model_cfg = base.model
    tokenizer = load_tokenizer(model_cfg)
    prepared = prepare(base, "auto")
    encoded = {name: tokenize({**base.data, "max_eval_samples": None,  # the file has that source's columns
                               "validation": {**base.data[src], "path": str(path)}},
                              tokenizer, model_cfg["max_length"]).validation.to(prepared.device)
               for name, (path, src) in sets.items()}
    out: dict[str, list[float]] = {name: [] for name in sets}
    for seed in seeds:
        space = base.with_params({**chosen, "seed": seed})
        model, _ = fine_tune(space, space.hyperparameters(), prepared)
        for name, enc in encoded.items():
            out[name].append(evaluate(model, enc, prepared.data, prepared.device)["accuracy"])
    return out


def mean_se(values: list[float], n_rows: int) -> tuple[float, float]:
    """Mean over retrains, and its standard error: retrain spread plus the binomial error of n_rows rows."""
    m = statistics.fmean(values)
    var_seeds = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
    return m, math.sqrt(var_seeds + m * (1 - m) / n_rows)


# ---------------------------------------------------------------------------------------------------------------
# Report.


def plot(runs: list[dict], path: Path) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for i, r in enumerate(runs):
        color = colors[i % len(colors)]
        for side, dash in (("anchor", "dot"), ("hpsearch", "solid")):
            pts = [(t, b) for t, b in r[side]["curve"] if b >= 0]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                         line={"shape": "hv", "dash": dash, "color": color},
                                         name=f"{side if side == 'anchor' else r['label']} seed {r['seed']}"))
    fig.update_layout(title="Best-so-far validation accuracy against wall time (from each study's first trial)",
                      xaxis_title="seconds", yaxis_title="best validation accuracy", template="plotly_white",
                      width=1100, height=600)
    fig.update_xaxes(type="log")
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
    if path.suffix == ".png":
        chrome = next((c for c in ("chromium", "chromium-browser", "google-chrome") if _which(c)), None)
        if chrome is None:
            return html
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--hide-scrollbars", f"--user-data-dir={tmp}", "--virtual-time-budget=5000",
                            "--window-size=1120,620", f"--screenshot={path.resolve()}", f"file://{html.resolve()}"],
                           check=False, capture_output=True, timeout=120)
        return path if path.exists() else html
    return html


def _which(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _report_line(path: Path, head: str) -> str | None:
    """A line of an existing report (``- date: ``, ``- machine: ``): raw results written before 2026-11-26 do not
    hold the date, before 2026-11-27 not the machine."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return next((ln[len(head):] for ln in lines if ln.startswith(head)), None)


def report(a: argparse.Namespace, runs: list[dict], plot_path: Path, argv: list[str], when: str | None = None,
           prior: dict | None = None, host: str | None = None) -> str:
    """The markdown report of ``runs``; ``when`` the run ended (default now) on ``host`` (default this machine);
    ``prior`` the ``--warm-start`` study."""
    from hpsearch.config.placement import threads_per_worker

    lines = [f"# Search benchmark: hpsearch ({a.label}) against Trainer.hyperparameter_search", "",
             f"- date: {when or now()}",
             f"- machine: {host or machine()}",
             f"- command: `python -m bench.search {' '.join(argv)}`",
             f"- data: {a.train} rows 1-{a.n_train} (train), {a.validation_source} (validation), "
             f"held-out: {a.train} rows {a.n_train + 1}-{a.n_train + a.heldout}; max_length {a.max_length}",
             f"- space: `{os.path.relpath(a.space, REPO)}`"
             + (f" with {', '.join(f'`{o}`' for o in a.overrides)}" if a.overrides else ""),
             f"- anchor: `{os.path.relpath(a.anchor, REPO)}`, {a.trials} trials per study"
             + (f" (reused from {a.anchor_json})" if a.anchor_json else " (run in this invocation)"),
             f"- hpsearch: {a.hp_trials or a.trials} trials per study"
             + (f" by {a.workers} worker processes ({threads_per_worker(a.workers)} threads each)"
                if a.workers > 1 else "") + "; held-out accuracy: each chosen config retrained "
             f"{a.retrain_seeds} times (training seeds 0-{a.retrain_seeds - 1}), mean ± standard error",
             *([f"- warm start: each hpsearch study first ran the {len(prior['enqueued'])} best configs of the earlier "
                f"study `{prior['study']}` ({prior['trials']} trials on {prior['train']}, best {prior['best']:.3f}, "
                f"{prior['wall_s']:.0f} s, not counted in *reach*)"] if prior else []), "",
             "Times are seconds from each study's first trial start. *reach* is when hpsearch's best-so-far first "
             "reached the anchor's final best; *ratio* divides it by the anchor's time to that best (target <= 0.25).",
             "", "| seed | anchor best | at s | anchor study s | pruned | hpsearch best | at s | hpsearch study s | "
             "pruned | reach s | ratio | held-out anchor | held-out hpsearch | diff (pts) | within 1 SE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios, ok_held = [], []
    for r in runs:
        an, hp = r["anchor"], r["hpsearch"]
        reach = time_to_reach(hp["curve"], an["best"])
        ratio = None if reach is None else reach / an["time_to_best_s"]
        ratios.append(math.inf if ratio is None else ratio)
        (ma, sa), (mh, sh) = r["held_anchor"], r["held_hpsearch"]
        se = math.sqrt(sa**2 + sh**2)
        ok = mh >= ma - se
        ok_held.append(ok)
        lines.append(f"| {r['seed']} | {an['best']:.3f} | {an['time_to_best_s']:.0f} | {an['search_s']:.0f} | "
                     f"{an['pruned']}/{len(an['states'])} | {hp['best']:.3f} | {hp['time_to_best_s']:.0f} | "
                     f"{hp['search_s']:.0f} | {hp['pruned']}/{len(hp['states'])} | {fmt(reach, '.0f')} | "
                     f"{'never' if ratio is None else f'{ratio:.2f}'} | {ma:.3f} ± {sa:.3f} | {mh:.3f} ± {sh:.3f} | "
                     f"{100 * (mh - ma):+.1f} | {'yes' if ok else 'no'} |")
    med = statistics.median(ratios)
    prior_s = prior["wall_s"] if prior else 0.0
    with_prior = [r + prior_s / run["anchor"]["time_to_best_s"] for r, run in zip(ratios, runs)]
    lines += ["", f"- **Median ratio (time for hpsearch to reach the anchor's best / the anchor's time to it): "
              f"{_ratio_text(med)}** (target <= 0.25)",
              f"- **Held-out accuracy of hpsearch's chosen config >= the anchor's within one standard error: "
              f"{sum(ok_held)} of {len(ok_held)} seeds**",
              *([f"- Counting the earlier study's {prior['wall_s']:.0f} s in hpsearch's time: median ratio "
                 f"{_ratio_text(statistics.median(with_prior))}"] if prior else []),
              "", "Chosen configs (the anchor's as it ran: dropout 0.1, no frozen layers):", ""]
    for r in runs:
        as_run = {**r["anchor"]["chosen"], **ANCHOR_AS_RUN}
        lines.append(f"- seed {r['seed']}: anchor {_short(as_run)}; hpsearch trial {r['hpsearch']['chosen_trial']} "
                     f"{_short(r['hpsearch']['chosen'])}")
    for i, params in enumerate(prior["enqueued"] if prior else []):
        lines.append(f"- warm-start config {i + 1} (trial {i} of every hpsearch study): {_short(params)}")
    if any(r["hpsearch"].get("confirmed") for r in runs):
        lines += ["", "`study.confirm` (the best trials retrained on cross-validation folds before choosing): the "
                  "trial chosen by value alone against the confirmed choice, both retrained and scored on the same "
                  "held-out rows.", "",
                  "| seed | best by value: trial, value | held-out | confirmed choice: trial, score | held-out | "
                  "confirmation s |", "|---|---|---|---|---|---|"]
        for r in runs:
            hp = r["hpsearch"]
            if not hp.get("confirmed"):
                continue
            (mv, sv), (mh, sh) = r["held_by_value"], r["held_hpsearch"]
            score = hp["confirmed"].get(str(hp["chosen_trial"]), {}).get("score")
            lines.append(f"| {r['seed']} | {hp['by_value_trial']}, {hp['best']:.3f} | {mv:.3f} ± {sv:.3f} | "
                         f"{hp['chosen_trial']}, {fmt(score)} | {mh:.3f} ± {sh:.3f} | {hp['confirm_s']:.0f} |")
    lines += ["", f"![best so far against wall time]({os.path.relpath(plot_path, Path(a.out).parent)})", ""]
    return "\n".join(lines)


def _ratio_text(ratio: float) -> str:
    return "never" if math.isinf(ratio) else f"{ratio:.2f}"


def _short(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_report(a: argparse.Namespace, runs: list[dict], argv: list[str], when: str | None = None,
                 prior: dict | None = None, host: str | None = None) -> Path:
    """The figure (``--plot``, default bench/results/<out stem>.png) and the markdown report (``--out``) of
    ``runs``."""
    figure = plot(runs, Path(a.plot or RESULTS / f"{Path(a.out).stem.lower()}.png"))
    Path(a.out).write_text(report(a, runs, figure, argv, when, prior, host) + "\n", encoding="utf-8")
    return Path(a.out)


def rewrite_report(json_path: str, out: str | None = None, plot: str | None = None) -> Path:
    """Rewrite an earlier invocation's report and figure from its raw results, with its own arguments (to ``out``
    and ``plot`` instead of its own, if given)."""
    raw, a = earlier_run(json_path, run=False)
    earlier = Path(a.out)
    if out is not None:
        a.out, a.plot = str(Path(out).resolve()), plot
    return write_report(a, raw["runs"], raw["argv"], raw.get("date") or _report_line(earlier, "- date: "),
                        raw.get("prior"), raw.get("machine") or _report_line(earlier, "- machine: "))


def main() -> None:
    a = parse_args()
    if a.report_only:
        print(f"[search] rewrote {rewrite_report(a.report_only)}", file=sys.stderr)
        return
    argv = sys.argv[1:]
    work = Path(a.workdir)
    stem = Path(a.out).stem
    raw_json = Path(a.json or RAW / f"{stem.lower()}.json")
    header, rows = read_rows(a.train, a.n_train, a.n_train + a.heldout)
    if len(rows) < a.heldout:
        sys.exit(f"{a.train}: only {len(rows)} rows after the first {a.n_train} (--heldout {a.heldout})")
    heldout = write_tsv(work / f"heldout-{stem.lower()}.tsv", header, rows)
    reused = ({r["seed"]: r["anchor"] for r in json.loads(Path(a.anchor_json).read_text())["runs"]}
              if a.anchor_json else {})
    prior = prior_study(a) if a.warm_start else None
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        print(f"[search] seed {seed}: anchor", file=sys.stderr, flush=True)
        anchor = reused.get(seed) or run_anchor(a, seed, work)
        print(f"[search] seed {seed}: anchor best {anchor['best']:.3f} at {anchor['time_to_best_s']:.0f} s; hpsearch",
              file=sys.stderr, flush=True)
        hp = run_hpsearch(a, seed, work)
        print(f"[search] seed {seed}: hpsearch best {hp['best']:.3f} at {hp['time_to_best_s']:.0f} s; held-out",
              file=sys.stderr, flush=True)
        held_a = heldout_accuracy(a, anchor["chosen"], heldout, as_anchor=True)
        held_h = heldout_accuracy(a, hp["chosen"], heldout, as_anchor=False)
        # The study's best trial by value alone, what it would have chosen without study.confirm.
        same = hp["by_value_trial"] == hp["chosen_trial"]
        held_v = held_h if same else heldout_accuracy(a, hp["by_value"], heldout, as_anchor=False)
        runs.append({"seed": seed, "label": a.label, "anchor": anchor, "hpsearch": hp,
                     "held_anchor": mean_se(held_a, len(rows)), "held_hpsearch": mean_se(held_h, len(rows)),
                     "held_by_value": mean_se(held_v, len(rows)),
                     "held_values": {"anchor": held_a, "hpsearch": held_h, "by_value": held_v}})
        raw_json.parent.mkdir(parents=True, exist_ok=True)
        raw_json.write_text(json.dumps({"argv": argv, "date": now(), "machine": machine(), "prior": prior,
                                        "runs": runs}, indent=1))
        write_report(a, runs, argv, prior=prior)
        print(f"[search] seed {seed} done: {a.out}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

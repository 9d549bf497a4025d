"""The HTML report: self-contained, every section present, pruning savings computed as documented."""
from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

from hpsearch.config.load import load_space
from hpsearch.config.options import RunOptions
from hpsearch.outputs.report import pruning_savings, write_report
from hpsearch.study import runner
from hpsearch.study.progress import Progress


@pytest.fixture
def real_study(make_space, tmp_path: Path) -> optuna.Study:
    good = {"learning_rate": 5e-3, "dropout": 0.0}
    space = load_space(make_space(fixed__epochs=3, study__enqueue=[good, good, {"learning_rate": 1e-6, "dropout": 0.0}],
                                  params__learning_rate={"type": "float", "low": 1e-6, "high": 1e-2, "log": True}))
    return runner.run_study(space, RunOptions(storage=f"sqlite:///{tmp_path}/r.db", trials=4), progress=Progress())


def test_report_is_self_contained_with_every_section(real_study: optuna.Study, tmp_path: Path) -> None:
    assert "PRUNED" in [t.state.name for t in real_study.trials]
    path = write_report(real_study, tmp_path / "report.html")
    text = path.read_text()
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: plotly.js is inline
    assert text.count("Plotly.newPlot") >= 6 and len(re.findall(r"plotly\.js v\d", text)) == 1
    for heading in ("Optimization history", "Learning curves", "Parameter importances", "Parallel coordinates",
                    "Slice: learning_rate", "Slice: dropout", "Top 10 trials", "Compute saved by pruning",
                    "What the top trials measured"):
        assert heading in text, heading
    for column in ("train_time_s (s)", "peak_memory_mb (MB)", "tokens_per_s (tokens/s)", "parameters (count)"):
        assert column in text, column  # the measurements, with the table's units


def test_pruning_savings_estimate() -> None:
    study = optuna.create_study()
    start = dt.datetime(2026, 1, 1)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for state, secs, done in ((optuna.trial.TrialState.PRUNED, 10, 0.5), (optuna.trial.TrialState.COMPLETE, 40, 2.0)):
        trial = optuna.trial.create_trial(
            state=state, value=0.5 if state.name == "COMPLETE" else None, params={"x": 0.1}, distributions=dist,
            intermediate_values={1: 0.4}, user_attrs={"epochs_completed": done, "hyperparameters": {"epochs": 2}})
        trial.datetime_start, trial.datetime_complete = start, start + dt.timedelta(seconds=secs)
        study.add_trial(trial)
    s = pruning_savings(study)
    assert s["pruned_trials"] == 1 and s["pruned_full_estimate_s"] == pytest.approx(40.0)
    assert s["saved_s"] == pytest.approx(30.0) and s["saved_fraction"] == pytest.approx(30 / 80)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_figures_render_in_headless_chromium(real_study: optuna.Study, tmp_path: Path) -> None:
    path = write_report(real_study, tmp_path / "report.html")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    figures = path.read_text().count("Plotly.newPlot")
    assert dom.count('class="main-svg"') >= figures  # plotly drew an SVG for every figure

"""Confirm a study's best configs on rows no trial was selected on, before one of them is chosen.

The best of many trials on one validation set is partly the best fit to that set's sample: on the search
benchmark, the config a 30-trial study chose scored 2.2 points above the anchor's on the 500 validation rows with
every one of four training seeds, and 2.0-2.5 points below it on other rows of both files (bench/README.md,
"What a study's best is"). Retraining with other seeds cannot see that; other rows can.

``study.confirm: {top_k: K, folds: F}``: after a worker's trials, each of the K best completed trials is retrained
F times, once per cross-validation fold (:meth:`hpsearch.tasks.encoded.PreparedData.fold`: a block of training rows
becomes the validation set, the validation rows join training), with the trial's own config and seed. The trial's
*confirmed score* is the mean of its value and its fold values, stored on the study as user attribute
``confirm:<trial number>`` (finished trials cannot be changed). :func:`hpsearch.study.record.ranked_trials` ranks
confirmed trials by that score, ahead of unconfirmed ones: export, report and ``--keep-best`` follow it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import optuna

from ..config.space import Space
from ..finetune.recipe import Prepared, fine_tune
from . import record


def candidates(study: optuna.Study, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top_k`` best completed trials by value that no worker has confirmed or claimed yet."""
    return [t for t in record.by_value(study)[:top_k] if not record.claimed(study, t.number)]


def fold_values(space: Space, params: dict, prepared: Prepared, folds: int) -> list[float]:
    """The metric of ``params`` (the space's fixed values, its seed included) on each fold, trained as a trial is."""
    run = space.with_params(params)
    hp, metric = run.hyperparameters(), run.study.metric
    out = []
    for k in range(1, folds + 1):
        model, result = fine_tune(run, hp, replace(prepared, data=prepared.data.fold(k, folds)))
        out.append(float(result.metrics[metric]))
        del model
    return out


def confirm_top(study: optuna.Study, space: Space, prepared: Prepared, say: Any = None) -> dict[int, dict]:
    """Confirm the study's best ``study.confirm.top_k`` trials on ``study.confirm.folds`` folds each (those no
    other worker took); return the confirmations this call made. ``say`` gets one line per confirmed trial."""
    cfg = space.study.confirm
    if not cfg:
        return {}
    made = {}
    for trial in candidates(study, cfg.top_k):
        if record.claimed(study, trial.number):  # another worker took it since
            continue
        key = record.confirm_key(trial.number)
        study.set_user_attr(key, {"claimed": True})
        t0 = time.perf_counter()
        values = fold_values(space, trial.params, prepared, cfg.folds)
        result = {"values": [trial.value, *values], "score": statistics.fmean([trial.value, *values]),
                  "seconds": round(time.perf_counter() - t0, 1)}
        study.set_user_attr(key, result)
        made[trial.number] = result
        if say is not None:
            say(f"confirmed trial {trial.number}: {space.study.metric} {trial.value:.4f} on validation, "
                f"{', '.join(f'{v:.4f}' for v in values)} on {len(values)} fold(s); score {result['score']:.4f}")
    return made

"""Confirm a study's best configs on rows no trial was selected on, before one of them is chosen.

The best of many trials on one validation set is partly the best fit to that set's sample: on the search
benchmark, the config a 30-trial study chose scored 2.2 points above the anchor's on the 500 validation rows with
every one of four training seeds, and 2.0-2.5 points below it on other rows of both files (bench/README.md,
"Why the chosen configs lost"). Retraining with other seeds cannot see that; other rows can.

``study.confirm: {top_k: K, folds: F}``: after a worker's trials, each of the K best completed trials is retrained
F times, once per cross-validation fold (:meth:`hpsearch.data.PreparedData.fold`: a block of training rows becomes
the validation set, the validation rows join training), with the trial's own config and seed. The trial's
*confirmed score* is the mean of its value and its fold values, stored on the study as user attribute
``confirm:<trial number>`` (finished trials cannot be changed). :func:`hpsearch.exporter.ranked_trials` ranks
confirmed trials by that score, ahead of unconfirmed ones: export, report and ``--keep-best`` follow it.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import optuna

from .space import Space

ATTR = "confirm:"


def confirmation(study: optuna.Study, number: int) -> dict | None:
    """The stored confirmation of trial ``number`` (``values``, ``score``, ``seconds``), or None."""
    record = study.user_attrs.get(f"{ATTR}{number}")
    return record if record and "score" in record else None


def confirmations(study: optuna.Study) -> dict[int, dict]:
    """Every finished confirmation of the study, by trial number."""
    out = {}
    for key, record in study.user_attrs.items():
        if key.startswith(ATTR) and isinstance(record, dict) and "score" in record:
            out[int(key[len(ATTR):])] = record
    return out


def candidates(study: optuna.Study, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top_k`` best completed trials by value that no worker has confirmed or claimed yet."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    attrs = study.user_attrs
    return [t for t in done[:top_k] if f"{ATTR}{t.number}" not in attrs]


def fold_values(space: Space, params: dict, data: Any, device: Any, folds: int) -> list[float]:
    """The metric of ``params`` (the space's fixed values, its seed included) on each fold, trained as a trial is."""
    from .model import build_model
    from .selection import Selection
    from .training import train

    run = space.with_params(params)
    hp, study_cfg = dict(run.fixed), run.study
    out = []
    for k in range(1, folds + 1):
        fold = data.fold(k, folds)
        model = build_model(run.config["model"], hp, fold, device)
        result = train(model, fold, hp, device=device, reports_per_epoch=study_cfg["reports_per_epoch"],
                       intermediate_eval_samples=study_cfg["intermediate_eval_samples"],
                       precision=run.config["model"]["precision"], selection=Selection.from_study(study_cfg))
        out.append(float(result.metrics[study_cfg["metric"]]))
        del model
    return out


def confirm_top(study: optuna.Study, space: Space, data: Any, device: Any, say: Any = None) -> dict[int, dict]:
    """Confirm the study's best ``study.confirm.top_k`` trials on ``study.confirm.folds`` folds each (those no
    other worker took); return the confirmations this call made. ``say`` gets one line per confirmed trial."""
    cfg = space.study.get("confirm")
    if not cfg:
        return {}
    made = {}
    for trial in candidates(study, cfg["top_k"]):
        key = f"{ATTR}{trial.number}"
        if key in study.user_attrs:  # another worker took it since
            continue
        study.set_user_attr(key, {"claimed": True})
        t0 = time.perf_counter()
        values = fold_values(space, trial.params, data, device, cfg["folds"])
        record = {"values": [trial.value, *values], "score": statistics.fmean([trial.value, *values]),
                  "seconds": round(time.perf_counter() - t0, 1)}
        study.set_user_attr(key, record)
        made[trial.number] = record
        if say is not None:
            say(f"confirmed trial {trial.number}: {space.study['metric']} {trial.value:.4f} on validation, "
                f"{', '.join(f'{v:.4f}' for v in values)} on {len(values)} fold(s); score {record['score']:.4f}")
    return made

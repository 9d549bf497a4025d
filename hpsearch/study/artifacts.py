"""Kept models: the weights of a study's best K trials in Optuna's artifact store, so nothing is retrained.

``run --keep-best K`` saves a completed trial's model (a model directory, see :mod:`hpsearch.finetune.modeldir`, packed
as one ``model.tar`` artifact of the trial) when its value ranks among the K best completed trials, and removes
the artifacts of trials that drop out of the top K. Every worker does this after each trial it completes, so the
store converges to the top K whatever the number of workers (two workers finishing at once may briefly leave
K + 1). The store's location is kept on the study (user attribute ``artifacts``), so ``export --model`` finds it.

Locations: a directory (Optuna's FileSystemArtifactStore; on a cluster, one all workers mount), ``s3://BUCKET``
(Boto3ArtifactStore) or ``gs://BUCKET`` (GCSArtifactStore). Default: beside an SQLite study file
(``studies.db`` -> ``studies-artifacts/``), else ``./hpsearch-artifacts`` in the working directory
(:func:`hpsearch.study.storage.artifact_location`).
"""
from __future__ import annotations

import json
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import optuna

from ..errors import HpsearchError, UsageError
from . import record

MODEL_FILE = "model.tar"
PREFIX = "artifacts:"  # Optuna's system-attribute prefix for a trial's artifact metadata


def open_store(location: str) -> Any:
    """The Optuna artifact store for a location: a directory (created), ``s3://BUCKET`` or ``gs://BUCKET``."""
    if location.startswith(("s3://", "gs://")):
        bucket = location[5:].strip("/")
        if not bucket or "/" in bucket:
            raise UsageError(f"--artifacts {location}: give a bucket only (s3://BUCKET or gs://BUCKET)")
        try:
            if location.startswith("s3://"):
                return optuna.artifacts.Boto3ArtifactStore(bucket)
            return optuna.artifacts.GCSArtifactStore(bucket)
        except ImportError as exc:
            raise UsageError(f"--artifacts {location}: {exc} (pip install boto3 / google-cloud-storage)") from None
    path = Path(location).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--artifacts {location}: cannot create the directory: {exc.strerror}") from None
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def model_artifact_ids(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The ids of the ``model.tar`` artifacts attached to a trial (present in the store or since removed)."""
    import json

    out = []
    for key, value in trial.system_attrs.items():
        if key.startswith(PREFIX) and json.loads(value).get("filename") == MODEL_FILE:
            out.append(key[len(PREFIX):])
    return out


class ModelKeeper:
    """Keeps the models of the ``k`` best completed trials of a study in ``store``."""

    def __init__(self, store: Any, location: str, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        self.store, self.location, self.k = store, location, k

    def ranks_in_top_k(self, study: optuna.Study, value: float) -> bool:
        """Whether a trial completing now with ``value`` would be among the k best, ranked as :meth:`prune` ranks
        (:func:`hpsearch.study.record.ranked_trials`)."""
        return record.rank_of_new(study, value) < self.k

    def offer(self, trial: optuna.Trial, value: float, save: Callable[[Path], Any]) -> bool:
        """Save the running trial's model (``save(dir)`` writes it) if it ranks in the top k; return whether kept."""
        if not self.ranks_in_top_k(trial.study, value):
            return False
        with tempfile.TemporaryDirectory(prefix="hpsearch-keep-") as tmp:
            model_dir = Path(tmp) / "model"
            save(model_dir)
            archive = Path(tmp) / MODEL_FILE
            with tarfile.open(archive, "w") as tar:
                for f in sorted(model_dir.iterdir()):
                    tar.add(f, arcname=f.name)
            upload_whole(self.store, archive, trial)
        return True

    def prune(self, study: optuna.Study) -> list[int]:
        """Remove the models of completed trials outside the top k; return the trial numbers whose model went.

        Called after each trial finishes (a study callback), so the trial just kept is ranked too."""
        ranked = record.ranked_trials(study)  # by value, or by confirmed score once study.confirm has run
        removed = []
        for t in ranked[self.k:]:
            for artifact_id in model_artifact_ids(t):
                try:
                    self.store.remove(artifact_id)
                    removed.append(t.number)
                except optuna.artifacts.exceptions.ArtifactNotFound:
                    pass  # removed before, by this worker or another
                except OSError as exc:  # a read-only or failing store: the model stays, the study goes on
                    print(f"[hpsearch] note: trial {t.number}'s kept model could not be removed from "
                          f"{self.location} ({exc.strerror or exc}); it stays", file=sys.stderr, flush=True)
        return removed


def upload_whole(store: Any, archive: Path, trial: optuna.Trial) -> str:
    """Put ``archive`` in ``store`` as an artifact of ``trial``, all or nothing: written first, registered on the
    trial only once whole (Optuna's ``upload_artifact`` registers first, so a write the disk cut short stays
    attached to its trial, and ``export --model`` then fails on it); a failed write removes what it wrote.
    Returns the artifact's id."""
    artifact_id = str(uuid.uuid4())
    try:
        with open(archive, "rb") as f:
            store.write(artifact_id, f)
    except BaseException:
        try:
            store.remove(artifact_id)
        except Exception:  # nothing was written, or the store cannot even remove: the write's error says why
            pass
        raise
    meta = {"artifact_id": artifact_id, "filename": MODEL_FILE, "mimetype": "application/x-tar", "encoding": None}
    trial.storage.set_trial_system_attr(trial._trial_id, PREFIX + artifact_id, json.dumps(meta))
    return artifact_id


def download_model(study: optuna.Study, trial: optuna.trial.FrozenTrial, location: str | None, dest: Path) -> None:
    """Unpack a trial's kept model into ``dest``; a UsageError when it was never kept or has been removed."""
    location = location or study.user_attrs.get(record.ARTIFACTS)
    ids = model_artifact_ids(trial)
    retrain = "retrain it: hpsearch train --config <exported .yaml> --output-dir DIR"
    if not ids or not location:
        raise UsageError(f"trial {trial.number} of study {study.study_name!r} has no kept model (run with "
                         f"--keep-best K to keep the best trials' weights); {retrain}")
    store = open_store(location)
    with tempfile.TemporaryDirectory(prefix="hpsearch-export-") as tmp:
        archive = Path(tmp) / MODEL_FILE
        try:
            optuna.artifacts.download_artifact(artifact_store=store, artifact_id=ids[-1], file_path=str(archive))
        except optuna.artifacts.exceptions.ArtifactNotFound:
            raise UsageError(f"trial {trial.number}'s kept model is no longer in {location} (it dropped out of "
                             f"the top --keep-best, or the store moved: pass --artifacts DIR); {retrain}") from None
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tar:
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(dest, **kwargs)
        except (tarfile.TarError, OSError) as exc:
            raise HpsearchError(f"trial {trial.number}'s kept model in {location} cannot be unpacked: {exc}") from None

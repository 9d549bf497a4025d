"""Which evaluation of a run counts: early stopping and the best evaluation kept (Trainer's EarlyStoppingCallback and
``load_best_model_at_end``), for a training loop that knows nothing of Optuna.

Only evaluations on the whole validation set (*checkpoints*) are compared: the final one, every epoch end when
this policy is active, and every intermediate one when the intermediate subset covers the validation set. Pruner
evaluations on a subset are not comparable with them and are never chosen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.sections import StudySection
from ..config.vocabulary import TRIAL_VALUES


@dataclass(frozen=True)
class Selection:
    """The policy: which metric, which way is better, ``keep`` best or last, and early stopping (``patience`` None
    is off). A ``patience`` of P stops a run after P checkpoints in a row without an improvement > ``min_delta``."""

    metric: str
    maximize: bool
    keep: str = "last"
    patience: int | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.keep not in TRIAL_VALUES:
            raise ValueError(f"keep must be one of {TRIAL_VALUES}, got {self.keep!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience!r}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta!r}")

    @property
    def active(self) -> bool:
        """Whether epoch ends need whole-validation evaluations (something to compare or keep)."""
        return self.keep == "best" or self.patience is not None

    @classmethod
    def from_study(cls, study: StudySection) -> Selection:
        """The policy a validated space's ``study`` section asks for."""
        stop = study.early_stopping
        return cls(metric=study.metric, maximize=study.direction == "maximize", keep=study.trial_value,
                   patience=stop.patience if stop else None, min_delta=stop.min_delta if stop else 0.0)


@dataclass
class Tracker:
    """Follows the checkpoints of one run: the best so far, its weights (``keep: best``), and when to stop."""

    policy: Selection
    best_value: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_report: int = 0
    best_epoch: float = 0.0
    since_best: int = 0
    stopped_early: bool = False
    weights: dict[str, torch.Tensor] | None = None
    extra: Any = None
    """Loop state that belongs with the kept weights (the vocabulary lever's decay factor)."""

    def improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        gain = value - self.best_value if self.policy.maximize else self.best_value - value
        return gain > self.policy.min_delta

    def update(self, model: torch.nn.Module, metrics: dict[str, float], report: int, epoch: float,
               extra: Any = None) -> bool:
        """Record a checkpoint; return True when early stopping says to stop now."""
        value = float(metrics[self.policy.metric])
        if self.improved(value):
            self.best_value, self.best_metrics = value, dict(metrics)
            self.best_report, self.best_epoch, self.since_best = report, epoch, 0
            if self.policy.keep == "best":
                self.weights = snapshot(model)
                self.extra = extra
        else:
            self.since_best += 1
        self.stopped_early = self.policy.patience is not None and self.since_best >= self.policy.patience
        return self.stopped_early

    def attrs(self) -> dict[str, Any]:
        """What a trial records about its checkpoints (user attributes)."""
        return {"best_report": self.best_report, "best_epoch": round(self.best_epoch, 4),
                "best_value": self.best_value, "stopped_early": self.stopped_early}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters training changes (frozen ones never do), on the device they live on."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def restore(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put a :func:`snapshot` back into ``model`` in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)

"""What the training loop is given and gives back: its settings beyond the hyperparameters (:class:`TrainSettings`),
where training stands (:class:`TrainingState`, handed to callbacks), the hooks it calls (:class:`Callback`) and
what a run produced (:class:`TrainResult`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.metrics import is_user_metric
from ..config.vocabulary import DEFAULT_REPORTS_PER_EPOCH, EVAL_BATCH_TOKENS
from ..errors import HpsearchError
from .checkpoints import Selection
from .precision import FP32, Precision

if TYPE_CHECKING:
    from ..config.space import Space


class NonFiniteLoss(HpsearchError):
    """The training loss became NaN or infinite: the trial cannot produce a meaningful result."""


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained and evaluated beyond its hyperparameters: what a space's study and model sections say
    about evaluations, precision and the checkpoint that counts."""

    reports_per_epoch: int = DEFAULT_REPORTS_PER_EPOCH
    """Evaluations per epoch: report k comes once k / reports_per_epoch epochs of examples were seen, so trials
    with different batch sizes and epoch counts report at comparable points."""
    intermediate_eval_samples: int | None = None
    """Intermediate (pruner) evaluations use the first N validation rows, the same in every trial; the final one
    always uses the whole validation set. None: every evaluation uses all of it."""
    precision: Precision = FP32
    """The resolved ``model.precision`` (:func:`hpsearch.finetune.precision.precision_plan`): the autocast dtype, and
    whether a loss scaler guards fp16 gradients (the parameters' dtypes are set when the model is built)."""
    eval_batch_tokens: int = EVAL_BATCH_TOKENS
    """Padded tokens per evaluation batch (``model.eval_batch_tokens``), at most :data:`EVAL_BATCH_SIZE` rows."""
    selection: Selection | None = None
    """Early stopping and the checkpoint kept (:mod:`hpsearch.finetune.checkpoints`); None: the last evaluation
    counts and epoch ends are not checkpoints."""
    user_metrics: tuple[str, ...] = ()
    """Metric functions (``package.module:function``) computed from each evaluation's predictions
    (:mod:`hpsearch.config.metrics`), under their own names."""
    distributed: str = "ddp"
    """How the devices of a trial's process group hold the model (``model.distributed``): ``ddp`` or ``fsdp``."""
    cuda_graphs: bool = False
    """Replay the training step from CUDA graphs (``model.cuda_graphs``; :mod:`hpsearch.finetune.graphs`)."""
    shrink_vocab: bool = True
    """Train only the embedding rows the data uses and put the full table back at the end
    (:mod:`hpsearch.finetune.vocab`): the same model without per-step work on rows whose gradient is zero."""

    def __post_init__(self) -> None:
        if self.reports_per_epoch < 1:
            raise ValueError(f"reports_per_epoch must be >= 1, got {self.reports_per_epoch!r}")
        if self.intermediate_eval_samples is not None and self.intermediate_eval_samples < 1:
            raise ValueError(f"intermediate_eval_samples must be >= 1 or None, got {self.intermediate_eval_samples!r}")

    @classmethod
    def from_space(cls, space: Space, precision: Precision = FP32) -> TrainSettings:
        """What a validated space asks for, in the ``precision`` its ``model.precision`` resolved to on the device:
        every trial, confirmation and retraining of it trains this way."""
        study = space.study
        return cls(reports_per_epoch=study.reports_per_epoch, intermediate_eval_samples=study.intermediate_eval_samples,
                   precision=precision, selection=Selection.from_study(study),
                   eval_batch_tokens=space.model.eval_batch_tokens, distributed=space.model.distributed,
                   cuda_graphs=space.model.cuda_graphs,
                   user_metrics=tuple(dict.fromkeys(m for m in [study.metric, *study.metrics] if is_user_metric(m))))


@dataclass
class TrainingState:
    """Where training stands; handed to callbacks and summarized in the result."""

    total_steps: int
    train_examples: int
    reports_per_epoch: int
    step: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    padded_tokens_seen: int = 0
    """Tokens the training passes computed, padding included."""
    report: int = 0
    loss: Any = float("nan")
    """The last step's training loss: a 0-d tensor on the training device (``float(state.loss)`` reads it; on a GPU
    reading it waits for the step, so the loop never does)."""
    micro_batch_size: int = 0
    """Rows per forward and backward pass (the batch when nothing is accumulated)."""
    train_time: float = 0.0
    eval_time: float = 0.0
    setup_time: float = 0.0
    parameters: int = 0
    """The model's parameters."""
    trainable_parameters: int = 0
    """The parameters training updates."""
    cuda_graphs: str = ""
    """With ``model.cuda_graphs``: whether the steps were replayed from graphs, and how many shapes were captured, or
    why not (empty: not asked for)."""

    @property
    def epochs_completed(self) -> float:
        """Epochs of data seen so far (fractional)."""
        return self.examples_seen / self.train_examples

    @property
    def examples_per_s(self) -> float:
        """Training throughput (evaluation time excluded)."""
        return self.examples_seen / max(self.train_time, 1e-9)

    @property
    def padding_ratio(self) -> float:
        """Padded tokens computed per real one (1.0: no padding; 0 before the first step)."""
        return self.padded_tokens_seen / self.tokens_seen if self.tokens_seen else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Real (unpadded) training tokens per second."""
        return self.tokens_seen / max(self.train_time, 1e-9)


class Callback:
    """Hooks the loop calls; the default does nothing. ``on_evaluate`` may raise to stop training."""

    def on_step(self, state: TrainingState) -> None:
        """After each optimizer step."""

    def on_evaluate(self, state: TrainingState, metrics: dict[str, float]) -> None:
        """After each intermediate or final evaluation; ``state.report`` numbers it comparably across trials."""


@dataclass
class TrainResult:
    """What a finished training run produced: final metrics and the cost of getting there."""

    metrics: dict[str, float]
    device: str
    steps: int
    epochs_completed: float
    train_time_s: float
    eval_time_s: float
    setup_time_s: float
    train_examples_per_s: float
    train_tokens_per_s: float
    peak_memory_mb: float
    history: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)
    """Where the best checkpoint was and whether training stopped early (empty without a Selection)."""
    cuda_graphs: str = ""
    """With ``model.cuda_graphs``: whether steps were replayed from graphs, or why not (empty: not asked for)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# The loop.

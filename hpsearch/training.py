"""The fine-tuning loop: train a model (built by :mod:`hpsearch.model`), evaluate it, keep its best checkpoint.

It knows nothing of Optuna: progress and evaluations go to a :class:`Callback`, whose ``on_evaluate`` may
raise to stop training (the objective raises ``TrialPruned`` there; ``hpsearch train`` only prints); a Ctrl-C held
by :mod:`hpsearch.interrupts` is raised between steps and evaluation batches. It knows no task either: the loss
and the metrics come from the data's task (:mod:`hpsearch.tasks`).
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .data import Encoded, PreparedData
from .errors import HpsearchError
from .interrupts import check as check_interrupt
from .selection import Selection, Tracker, restore
from .schema import SCHEDULER_KWARGS
from .tasks import get_task
from .tasks.base import generates
from .vocab import SmallVocabulary, shrink_vocabulary

EVAL_BATCH_SIZE = 64
"""Measured on a 2-core CPU: batches of 32-64 length-sorted rows evaluate 1.8x faster than 256 (cache-bound)."""


class NonFiniteLoss(HpsearchError):
    """The training loss became NaN or infinite: the trial cannot produce a meaningful result."""


@dataclass
class TrainingState:
    """Where training stands; handed to callbacks and summarized in the result."""

    total_steps: int
    train_examples: int
    reports_per_epoch: int
    step: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    report: int = 0
    loss: float = float("nan")
    train_time: float = 0.0
    eval_time: float = 0.0
    setup_time: float = 0.0

    @property
    def epochs_completed(self) -> float:
        """Epochs of data seen so far (fractional)."""
        return self.examples_seen / self.train_examples

    @property
    def examples_per_s(self) -> float:
        """Training throughput (evaluation time excluded)."""
        return self.examples_seen / max(self.train_time, 1e-9)

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; ``cuda`` without one is an error naming the flag."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HpsearchError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------------------
# Optimization pieces.


def make_optimizer(model: torch.nn.Module, hp: dict, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norms; fused kernel where available."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # fused kernels exist for CUDA and (torch >= 2.4) the CPU: 5x faster than foreach on a 22M-param model
        return torch.optim.AdamW(groups, lr=hp["learning_rate"], fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=hp["learning_rate"], foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, hp: dict, total_steps: int) -> Any:
    """transformers' learning-rate schedule by name, with warmup as a ratio of the total steps."""
    from transformers import get_scheduler

    warmup = math.ceil(hp["warmup_ratio"] * total_steps)
    kwargs = dict(SCHEDULER_KWARGS.get(hp["scheduler"], {}))
    if "num_decay_steps_ratio" in kwargs:
        kwargs = {"num_decay_steps": max(1, math.ceil(kwargs.pop("num_decay_steps_ratio") * total_steps))}
    return get_scheduler(hp["scheduler"], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=kwargs or None)


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                           group: int = 50) -> list[torch.Tensor]:
    """Random batches of similar length: shuffle, sort within chunks of ``group`` batches, shuffle batch order.

    Padding shrinks to almost nothing while every epoch still sees a fresh random grouping.
    """
    order = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        idx = idx[torch.argsort(lengths[idx], descending=True, stable=True)]
        batches.extend(idx.split(batch_size))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix products run natively (elsewhere bf16 is emulated and slower)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16. ``auto``: on a GPU that supports it, and on a CPU with native bf16.

    On this project's 2-core AMX CPU, bf16 autocast made the benchmark trials 1.3x faster with the same
    validation accuracy (bench/RESULTS.md); ``fp32`` turns it off.
    """
    if precision == "fp32":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return precision == "bf16" or cpu_has_native_bf16()


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, enc: Encoded, data: PreparedData, device: torch.device,
             batch_size: int = EVAL_BATCH_SIZE, bf16: bool = False, generate: bool = False) -> dict[str, float]:
    """The task's metrics over a whole split (``enc``; ``data`` names the task, labels and options), batched by
    sorted length so that padding is minimal. ``generate`` adds the metrics a generative task computes from
    generated text (ROUGE), at the cost of generating."""
    task = get_task(data.task)
    generate = generate and generates(task)
    was_training = model.training
    model.eval()
    order = torch.argsort(enc.lengths, descending=True, stable=True)
    parts, generated = [], []
    with _autocast(device, bf16):
        for idx in order.split(batch_size):
            check_interrupt()
            batch, labels = enc.batch(idx, device), enc.labels_of(idx, device)
            parts.append(task.evaluate_batch(task.forward(model, batch, labels), labels))
            if generate:
                generated.append(task.generate_batch(model, batch, labels, data))
    model.train(was_training)
    metrics = task.metrics_from(parts, data.label_names, data.options)
    if generate:
        metrics.update(task.generated_metrics(generated, data))
    return metrics


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(model: torch.nn.Module, data: PreparedData, hp: dict, *, device: torch.device,
          reports_per_epoch: int = 4, callback: Callback | None = None, setup_time: float = 0.0,
          intermediate_eval_samples: int | None = None, precision: str = "auto",
          shrink_vocab: bool = True, selection: Selection | None = None) -> TrainResult:
    """Fine-tune ``model`` on ``data.train`` with ``hp``; evaluate ``reports_per_epoch`` times per epoch.

    Evaluation k (``state.report == k``) happens once k / reports_per_epoch epochs of examples have been
    seen, so reports are comparable across trials with different batch sizes and epoch counts. Intermediate
    evaluations (the pruner's) may use the first ``intermediate_eval_samples`` validation examples, the same
    fixed subset in every trial; the final one always uses the whole validation set.

    ``shrink_vocab`` trains only the embedding rows the data uses and puts the full table back at the end, also
    when a callback stops training (:mod:`hpsearch.vocab`): the same model without per-step work on rows whose
    gradient is zero.

    ``selection`` (:mod:`hpsearch.selection`) turns on early stopping and/or keeping the best checkpoint: epoch
    ends are then evaluated on the whole validation set, and with ``keep: best`` the model ends with the weights
    of its best checkpoint and the result reports that checkpoint's metrics.
    """
    entered = time.perf_counter()
    vocab = shrink_vocabulary(model, data) if shrink_vocab else None
    try:
        return _fit(model, vocab.data if vocab else data, hp, device=device, vocab=vocab,
                    reports_per_epoch=reports_per_epoch, callback=callback or Callback(),
                    setup_time=setup_time + time.perf_counter() - entered,
                    intermediate_eval_samples=intermediate_eval_samples, precision=precision,
                    selection=selection)
    finally:
        if vocab is not None:
            vocab.restore(model)


def _fit(model: torch.nn.Module, data: PreparedData, hp: dict, *, device: torch.device,
         vocab: SmallVocabulary | None, reports_per_epoch: int, callback: Callback, setup_time: float,
         intermediate_eval_samples: int | None, precision: str, selection: Selection | None) -> TrainResult:
    """The loop behind :func:`train`, on data already renumbered for ``vocab`` when there is one."""
    entered = time.perf_counter()
    task = get_task(data.task)
    bf16 = use_bf16(precision, device)
    n = len(data.train)
    per_epoch = steps_per_epoch(n, hp["batch_size"])
    state = TrainingState(total_steps=per_epoch * hp["epochs"], train_examples=n,
                          reports_per_epoch=reports_per_epoch, setup_time=setup_time)
    optimizer = make_optimizer(model, hp, device)
    scheduler = make_scheduler(optimizer, hp, state.total_steps)
    if vocab is not None:
        vocab.track(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(hp["seed"])
    torch.manual_seed(hp["seed"])  # dropout masks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    subset = data.validation
    if intermediate_eval_samples is not None and intermediate_eval_samples < len(data.validation):
        subset = data.validation.head(intermediate_eval_samples)
    tracker = Tracker(selection) if selection is not None else None
    # Generation (ROUGE) costs far more than a forward pass: on the final evaluation only, unless the study's
    # metric is a generated one (then the pruner and the checkpoints need it on every evaluation).
    generate_always = selection is not None and generates(task, selection.metric)
    every_epoch = tracker is not None and selection.active  # epoch ends become whole-validation checkpoints
    stop = False
    model.train()
    state.setup_time = setup_time + (time.perf_counter() - entered)  # everything before the first training step
    for epoch in range(hp["epochs"]):
        seen_in_epoch = 0
        next_report = 1
        t0 = time.perf_counter()
        for idx in length_grouped_batches(data.train.lengths, hp["batch_size"], generator):
            batch = data.train.batch(idx, device)
            labels = data.train.labels_of(idx, device)
            with _autocast(device, bf16):
                logits = task.forward(model, batch, labels)
            loss = task.loss(logits, labels)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"training loss became {loss.item()} at step {state.step + 1}")
            loss.backward()
            if hp["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(trainable, hp["max_grad_norm"], foreach=True)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.examples_seen += len(idx)
            state.tokens_seen += int(data.train.lengths[idx].sum())
            seen_in_epoch += len(idx)
            state.loss = loss.item()
            check_interrupt()
            callback.on_step(state)
            crossed = 0
            while next_report <= reports_per_epoch and seen_in_epoch * reports_per_epoch >= next_report * n:
                crossed = next_report
                next_report += 1
            if crossed:
                state.train_time += time.perf_counter() - t0
                t_eval = time.perf_counter()
                last = epoch == hp["epochs"] - 1 and crossed == reports_per_epoch
                full = last or subset is data.validation or (every_epoch and crossed == reports_per_epoch)
                metrics = evaluate(model, data.validation if full else subset, data, device, bf16=bf16,
                                   generate=last or generate_always)
                state.eval_time += time.perf_counter() - t_eval
                state.report = epoch * reports_per_epoch + crossed
                history.append({"report": state.report, "step": state.step,
                                "epoch": round(state.epochs_completed, 4), "full": full, **metrics})
                callback.on_evaluate(state, metrics)
                if tracker is not None and full:
                    extra = vocab.decay if vocab is not None else None
                    stop = tracker.update(model, metrics, state.report, state.epochs_completed, extra) and not last
                t0 = time.perf_counter()
                if stop:
                    break
        state.train_time += time.perf_counter() - t0
        if stop:
            break
    if tracker is not None and tracker.policy.keep == "best" and tracker.weights is not None:
        restore(model, tracker.weights)
        if vocab is not None:
            vocab.decay = tracker.extra
        metrics = tracker.best_metrics
    if generates(task) and not any(m.generated and m.name in metrics for m in task.metrics):
        # The evaluation that counts did not generate (a kept checkpoint, or a stop before the last epoch):
        # score the model's generations now, once.
        t_eval = time.perf_counter()
        metrics = {**metrics, **evaluate(model, data.validation, data, device, bf16=bf16, generate=True)}
        state.eval_time += time.perf_counter() - t_eval
    return TrainResult(
        metrics=metrics,
        device=str(device),
        steps=state.step,
        epochs_completed=state.epochs_completed,
        train_time_s=state.train_time,
        eval_time_s=state.eval_time,
        setup_time_s=state.setup_time,
        train_examples_per_s=state.examples_per_s,
        train_tokens_per_s=state.tokens_per_s,
        peak_memory_mb=peak_memory_mb(device),
        history=history,
        selection=tracker.attrs() if tracker is not None else {},
    )

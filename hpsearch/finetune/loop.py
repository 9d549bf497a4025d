"""The fine-tuning loop: train a model (built by :mod:`hpsearch.finetune.model`), evaluate it, keep its best
checkpoint.

It knows nothing of Optuna: progress and evaluations go to a :class:`Callback`, whose ``on_evaluate`` may
raise to stop training (the objective raises ``TrialPruned`` there; ``hpsearch train`` only prints); a Ctrl-C held
by :mod:`hpsearch.interrupts` is raised between steps and evaluation batches. It knows no task either: the loss
and the metrics come from the data's task (:mod:`hpsearch.tasks`). :func:`train` is a flat chain of short stages:
set up (:func:`_start`), one optimizer step at a time (:func:`_step`), an evaluation where a report is due
(:func:`_report`), then the checkpoint that counts (:func:`_finish`).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import interrupts
from ..config.vocabulary import Hyperparameters
from ..interrupts import check as check_interrupt
from ..tasks import Task
from ..tasks.base import generates
from ..tasks.encoded import Encoded, PreparedData
from .batching import length_grouped_batches, steps_per_epoch
from .checkpoints import Tracker, restore
from .device import autocast, peak_memory_mb
from .distributed import Group, GroupLost, is_group_error
from .evaluation import evaluate
from .optim import make_optimizer, make_scheduler
from .state import Callback, NonFiniteLoss, TrainingState, TrainResult, TrainSettings
from .vocab import SmallVocabulary, shrink_vocabulary


def train(model: torch.nn.Module, data: PreparedData, hp: Hyperparameters, settings: TrainSettings = TrainSettings(), *,
          device: torch.device, callback: Callback | None = None, setup_time: float = 0.0,
          group: Group | None = None) -> TrainResult:
    """Fine-tune ``model`` on ``data.train`` with the hyperparameters ``hp``, evaluating as ``settings`` say.

    Evaluation k (``state.report == k``) happens once k / reports_per_epoch epochs of examples have been seen.
    With a ``settings.selection`` that is active, epoch ends are whole-validation checkpoints, and with ``keep:
    best`` the model ends with the weights of its best checkpoint and the result reports that checkpoint's
    metrics. With ``settings.shrink_vocab`` the full embedding table is put back also when a callback stops
    training. ``setup_time`` is what building the model cost before this call.

    With a ``group`` (:mod:`hpsearch.finetune.distributed`), every rank calls this with the same arguments: each
    trains on its share of every batch (the gradients averaged: the same update as one process on the whole
    batch), rank 0 alone evaluates and tells the callback, and the others stop when it does; they return a result
    without metrics.
    """
    entered = time.perf_counter()
    counts = (sum(p.numel() for p in model.parameters()),
              sum(p.numel() for p in model.parameters() if p.requires_grad))  # before the vocabulary shrinks
    vocab = shrink_vocabulary(model, data) if settings.shrink_vocab and group is None else None
    try:
        run = _start(model, vocab.data if vocab else data, hp, settings, device, vocab, callback or Callback(),
                     setup_time + time.perf_counter() - entered, group)
        run.state.parameters, run.state.trainable_parameters = counts
        for epoch in range(hp.epochs):
            if _epoch(run, epoch):
                break
        return _finish(run) if group is None or group.main or run.sharded else _follower_result(run)
    except RuntimeError as exc:
        if group is not None and is_group_error(exc):
            raise GroupLost(f"a rank of the trial's process group is gone ({str(exc).splitlines()[0][:200]})") \
                from exc
        raise
    finally:
        if vocab is not None:
            vocab.restore(model)


@dataclass
class _Run:
    """Everything one call of :func:`train` works with, set up once by :func:`_start`."""

    model: torch.nn.Module
    data: PreparedData
    hp: Hyperparameters
    device: torch.device
    task: Task
    settings: TrainSettings
    state: TrainingState
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[torch.nn.Parameter]
    generator: torch.Generator
    subset: Encoded
    """The validation rows of intermediate evaluations (all of them, or the first ``intermediate_eval_samples``)."""
    tracker: Tracker | None
    generate_always: bool
    """Generation (ROUGE) costs far more than a forward pass: on the final evaluation only, unless the metric that
    selects is a generated one (then the pruner and the checkpoints need it on every evaluation)."""
    every_epoch: bool
    """Whether epoch ends are whole-validation checkpoints (something to compare or keep)."""
    vocab: SmallVocabulary | None
    callback: Callback
    scaler: Any = None
    """fp16's loss scaler (``torch.amp.GradScaler``), None otherwise."""
    micro: int = 0
    """Rows per forward and backward pass: the batch, or ``micro_batch_size`` (halved on out of memory when the
    batch size chose it)."""
    shrink_on_oom: bool = False
    """Whether an out-of-memory step is retried with half the micro-batch (``micro_batch_size`` 0: not set)."""
    bad_step: torch.Tensor | None = None
    """On a GPU, the first step whose loss was not finite (0: none so far), kept on the device so that no step
    waits for the GPU to check; read at each report."""
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    group: Group | None = None
    """The trial's process group when it trains across devices (None: this process alone)."""
    trainer: torch.nn.Module | None = None
    """What the training passes run: the model, or the model in DistributedDataParallel within a group."""

    @property
    def autocast(self) -> torch.dtype | None:
        return self.settings.precision.autocast

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over the group (FSDP): then every rank evaluates, each forward gathering
        the shards (rank 0 alone tells the callback)."""
        return self.group is not None and self.settings.distributed == "fsdp"


def _start(model: torch.nn.Module, data: PreparedData, hp: Hyperparameters, settings: TrainSettings,
           device: torch.device, vocab: SmallVocabulary | None, callback: Callback, setup_time: float,
           group: Group | None = None) -> _Run:
    """Optimizer, schedule, seeded batch order and dropout, the evaluation subset and the checkpoint tracker."""
    entered = time.perf_counter()
    n = len(data.train)
    state = TrainingState(total_steps=steps_per_epoch(n, hp.batch_size) * hp.epochs, train_examples=n,
                          reports_per_epoch=settings.reports_per_epoch)
    trainer = group.wrap(model, device, settings.distributed) if group is not None else model  # before the optimizer
    optimizer = make_optimizer(model, hp, device)
    scheduler = make_scheduler(optimizer, hp, state.total_steps)
    if vocab is not None:
        vocab.track(optimizer)
    generator = torch.Generator().manual_seed(hp.seed)
    torch.manual_seed(hp.seed)  # dropout masks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    limit = settings.intermediate_eval_samples
    subset = (data.validation.head(limit) if limit is not None and limit < data.validation.example_count
              else data.validation)
    selection = settings.selection
    task = data.task
    micro = hp.micro_batch_size or hp.batch_size
    run = _Run(model=model, data=data, hp=hp, device=device, task=task, settings=settings,
               state=state, optimizer=optimizer, scheduler=scheduler,
               trainable=[p for p in model.parameters() if p.requires_grad], generator=generator, subset=subset,
               tracker=Tracker(selection) if selection is not None else None,
               generate_always=selection is not None and generates(task, selection.metric),
               every_epoch=selection is not None and selection.active, vocab=vocab, callback=callback,
               scaler=torch.amp.GradScaler(device.type) if settings.precision.scaler else None,
               micro=min(micro, hp.batch_size), shrink_on_oom=not hp.micro_batch_size and group is None,
               bad_step=torch.zeros((), dtype=torch.int64, device=device) if device.type == "cuda" else None,
               group=group, trainer=trainer)
    state.micro_batch_size = run.micro
    model.train()
    state.setup_time = setup_time + (time.perf_counter() - entered)  # everything before the first training step
    return run


def _epoch(run: _Run, epoch: int) -> bool:
    """One pass over the training rows in length-grouped random batches; True when training is to stop."""
    n, per_epoch = run.state.train_examples, run.state.reports_per_epoch
    seen, next_report = 0, 1
    t0 = time.perf_counter()
    for idx in length_grouped_batches(run.data.train.lengths, run.hp.batch_size, run.generator):
        _step(run, idx)
        seen += len(idx)
        crossed = 0
        while next_report <= per_epoch and seen * per_epoch >= next_report * n:
            crossed, next_report = next_report, next_report + 1
        if crossed:
            run.state.train_time += time.perf_counter() - t0
            stop = _report(run, epoch, crossed)
            t0 = time.perf_counter()
            if stop:
                return True
    run.state.train_time += time.perf_counter() - t0
    return False


def _step(run: _Run, idx: torch.Tensor) -> None:
    """One optimizer step on the rows ``idx``, accumulated over micro-batches of ``run.micro`` rows. An out-of-memory
    error retries the step with half the micro-batch when the batch size chose it; a non-finite loss stops the run
    (NonFiniteLoss: at once on the CPU; on a GPU at the next report, so that no step waits for the device)."""
    while True:
        try:
            loss = _accumulate(run, idx)
            break
        except torch.cuda.OutOfMemoryError:
            if not run.shrink_on_oom or run.micro == 1:
                raise
        # Out of the handler, the failed pass's activations are no longer held by the exception: free them.
        run.optimizer.zero_grad(set_to_none=True)
        run.micro = max(1, run.micro // 2)
        run.state.micro_batch_size = run.micro
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    state, hp = run.state, run.hp
    state.step += 1
    _check_finite(run, loss)
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    if hp.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.trainable, hp.max_grad_norm, foreach=True)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.examples_seen += len(idx)
    lengths = run.data.train.lengths
    state.tokens_seen += int(lengths[idx].sum())
    state.padded_tokens_seen += sum(len(part) * int(lengths[part].max()) for part in idx.split(run.micro))
    state.loss = loss.detach()
    if run.group is not None and run.group.any(interrupts.requested()):
        check_interrupt()  # the rank that holds the signal raises it; the others stop at the same step
        raise KeyboardInterrupt()
    check_interrupt()
    run.callback.on_step(state)


def _accumulate(run: _Run, idx: torch.Tensor) -> torch.Tensor:
    """Forward and backward over ``idx`` in micro-batches; return the batch's loss (each micro-batch's mean loss
    weighted by its share of the batch's units: rows, or learned tokens, as the task counts them), so that the
    gradients are those of one pass over the whole batch."""
    data, task = run.data.train, run.task
    if run.group is not None:
        return _accumulate_share(run, idx, run.group)
    parts = idx.split(run.micro)
    if len(parts) == 1:
        loss = _forward_loss(run, idx, data.labels_of(idx, run.device))
        _backward(run, loss)
        return loss.detach()
    labels = [data.labels_of(part, run.device) for part in parts]
    units = [_units(task, part_labels) for part_labels in labels]
    total = sum(units)
    loss_sum = torch.zeros((), device=run.device)
    for part, part_labels, n in zip(parts, labels, units):
        loss = _forward_loss(run, part, part_labels) * (n / total)
        _backward(run, loss)
        loss_sum = loss_sum + loss.detach()
    return loss_sum


def _accumulate_share(run: _Run, idx: torch.Tensor, group: Group) -> torch.Tensor:
    """This rank's share of a batch: every ``world``-th row from its ``rank``-th, in micro-batches, each loss
    weighted by its share of the whole batch's units times ``world`` (DistributedDataParallel averages the ranks'
    gradients, so their sum is one pass over the whole batch); return this rank's part of the batch's loss."""
    data, task = run.data.train, run.task
    total = float(_units(task, data.labels_of(idx, torch.device("cpu"))))
    mine, scale = idx[group.rank::group.world], float(group.world)
    if len(mine) == 0:  # fewer rows than ranks: still take part in the all-reduce, with a zero-weighted row
        mine, scale = idx[:1], 0.0
    parts = mine.split(run.micro)
    loss_sum = torch.zeros((), device=run.device)
    for i, part in enumerate(parts):
        labels = data.labels_of(part, run.device)
        with group.no_sync(run.trainer) if i < len(parts) - 1 else nullcontext():  # gradients reduced once, at the end
            loss = _forward_loss(run, part, labels) * (_units(task, labels) / total * scale)
            _backward(run, loss)
        loss_sum = loss_sum + loss.detach() / group.world
    return loss_sum


def _forward_loss(run: _Run, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task's mean loss on the training rows ``rows`` (whose ``labels`` the caller already gathered)."""
    batch = run.data.train.batch(rows, run.device)
    with autocast(run.device, run.autocast):
        logits = run.task.forward(run.trainer or run.model, batch, labels)
    return run.task.loss(logits, labels)


def _backward(run: _Run, loss: torch.Tensor) -> None:
    (run.scaler.scale(loss) if run.scaler is not None else loss).backward()


def _units(task: Task, labels: torch.Tensor) -> torch.Tensor | int:
    """How many units a batch's mean loss averages over: the task's ``loss_units`` (learned tokens), else rows."""
    count = getattr(task, "loss_units", None)
    return count(labels) if count is not None else labels.shape[0]


def _check_finite(run: _Run, loss: torch.Tensor) -> None:
    """Stop on a non-finite loss: on the CPU now; on a GPU remember the step on the device (:func:`_raise_nonfinite`
    reads it at each report)."""
    if run.bad_step is None:
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"training loss became {loss.item()} at step {run.state.step}")
        return
    first = (run.bad_step == 0) & ~torch.isfinite(loss)
    run.bad_step = torch.where(first, run.state.step, run.bad_step)


def _raise_nonfinite(run: _Run) -> None:
    """Raise NonFiniteLoss if a GPU step's loss was not finite since training began."""
    if run.bad_step is not None and int(run.bad_step):
        raise NonFiniteLoss(f"training loss became non-finite at step {int(run.bad_step)}")


def _report(run: _Run, epoch: int, crossed: int) -> bool:
    """Evaluate for report ``crossed`` of this epoch, tell the callback, and record a checkpoint; True to stop.
    Within a group, rank 0 does this and tells the other ranks whether to stop (also when it raises)."""
    group = run.group
    if group is None:
        return _evaluate_and_tell(run, epoch, crossed)
    if not group.main:
        if run.sharded:  # every forward gathers shards from every rank: evaluate too, telling no one
            _evaluate_and_tell(run, epoch, crossed)
        else:
            run.state.report = epoch * run.state.reports_per_epoch + crossed
        return bool(group.broadcast())
    try:
        stop = _evaluate_and_tell(run, epoch, crossed)
    except BaseException:
        group.broadcast(True)
        raise
    group.broadcast(stop)
    return stop


def _evaluate_and_tell(run: _Run, epoch: int, crossed: int) -> bool:
    state, data = run.state, run.data
    t_eval = time.perf_counter()
    last = epoch == run.hp.epochs - 1 and crossed == state.reports_per_epoch
    full = last or run.subset is data.validation or (run.every_epoch and crossed == state.reports_per_epoch)
    _raise_nonfinite(run)
    run.metrics = evaluate(run.model, data.validation if full else run.subset, data, run.device, dtype=run.autocast,
                           generate=last or run.generate_always, batch_tokens=run.settings.eval_batch_tokens,
                           user_metrics=run.settings.user_metrics)
    state.eval_time += time.perf_counter() - t_eval
    state.report = epoch * state.reports_per_epoch + crossed
    run.history.append({"report": state.report, "step": state.step, "epoch": round(state.epochs_completed, 4),
                        "full": full, **run.metrics})
    run.callback.on_evaluate(state, run.metrics)
    if run.tracker is None or not full:
        return False
    extra = run.vocab.decay if run.vocab is not None else None
    return run.tracker.update(run.model, run.metrics, state.report, state.epochs_completed, extra) and not last


def _follower_result(run: _Run) -> TrainResult:
    """What a rank other than 0 returns: how far it trained (rank 0's result holds the metrics)."""
    state = run.state
    return TrainResult(metrics={}, device=str(run.device), steps=state.step, epochs_completed=state.epochs_completed,
                       train_time_s=state.train_time, eval_time_s=0.0, setup_time_s=state.setup_time,
                       train_examples_per_s=state.examples_per_s, train_tokens_per_s=state.tokens_per_s,
                       peak_memory_mb=peak_memory_mb(run.device))


def _finish(run: _Run) -> TrainResult:
    """Put the kept checkpoint back, score generations once if the counting evaluation made none, summarize."""
    tracker, state = run.tracker, run.state
    metrics = run.metrics
    if tracker is not None and tracker.policy.keep == "best" and tracker.weights is not None:
        restore(run.model, tracker.weights)
        if run.vocab is not None:
            run.vocab.decay = tracker.extra
        metrics = tracker.best_metrics
    if generates(run.task) and not any(m.generated and m.name in metrics for m in run.task.metrics):
        # The evaluation that counts did not generate (a kept checkpoint, or a stop before the last epoch).
        t_eval = time.perf_counter()
        metrics = {**metrics, **evaluate(run.model, run.data.validation, run.data, run.device, dtype=run.autocast,
                                         generate=True, batch_tokens=run.settings.eval_batch_tokens)}
        state.eval_time += time.perf_counter() - t_eval
    return TrainResult(metrics=metrics, device=str(run.device), steps=state.step,
                       epochs_completed=state.epochs_completed, train_time_s=state.train_time,
                       eval_time_s=state.eval_time, setup_time_s=state.setup_time,
                       train_examples_per_s=state.examples_per_s, train_tokens_per_s=state.tokens_per_s,
                       peak_memory_mb=peak_memory_mb(run.device), history=run.history,
                       selection=tracker.attrs() if tracker is not None else {})

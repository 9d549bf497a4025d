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

import torch

from .. import interrupts
from ..config.vocabulary import Hyperparameters
from ..interrupts import check as check_interrupt
from ..tasks import Task
from ..tasks.base import generates
from ..tasks.encoded import Encoded, PreparedData
from . import durable
from .attention import additive_mask, compute_dtype
from .batching import Batch, bucket_widths, chunks, length_grouped_batches, rounded_width, steps_per_epoch
from .checkpoints import Tracker, restore
from .device import autocast, peak_memory_mb
from .distributed import Group, GroupLost, is_group_error
from .evaluation import evaluate
from .fused import Fuser, Member
from .graphs import StepGraphs
from .optim import make_optimizer, make_scheduler
from .run import Durability, Position, Run
from .state import Callback, NonFiniteLoss, TrainingState, TrainResult, TrainSettings
from .vocab import SmallVocabulary, shrink_vocabulary


def train(model: torch.nn.Module, data: PreparedData, hp: Hyperparameters, settings: TrainSettings = TrainSettings(), *,
          device: torch.device, callback: Callback | None = None, setup_time: float = 0.0,
          group: Group | None = None, fuser: Fuser | None = None, durability: Durability | None = None) -> TrainResult:
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

    With a ``fuser`` (:mod:`hpsearch.finetune.fused`) the model is a member of a fused group: its training passes
    run with the other members' as one, everything else as here.

    With a ``durability`` (:mod:`hpsearch.finetune.durable`) the run's whole state is saved at every report, at
    least every ``durability.every_s`` seconds of training and at the step boundary after SIGTERM or SIGINT, and it
    continues from ``durability.resume`` when given (a checkpoint it cannot continue from is said in
    ``durability.resumed["refused"]``, and the run starts from step 0).
    """
    entered = time.perf_counter()
    counts = (sum(p.numel() for p in model.parameters()),
              sum(p.numel() for p in model.parameters() if p.requires_grad))  # before the vocabulary shrinks
    vocab = shrink_vocabulary(model, data) if settings.shrink_vocab and group is None else None
    run = None
    try:
        run = _start(model, vocab.data if vocab else data, hp, settings, device, vocab, callback or Callback(),
                     setup_time + time.perf_counter() - entered, group, fused=fuser is not None)
        run.state.parameters, run.state.trainable_parameters = counts
        run.durable = durability
        if durability is not None and durability.resume is not None:
            _resume(run, durability)
        if fuser is not None:
            run.member = fuser.join(model, hp.dropout)
        for epoch in range(run.pos.epoch, hp.epochs):
            if _epoch(run, epoch):
                break
        if run.member is not None:  # restoring the kept checkpoint and a final generation keep no one waiting
            run.member.leave()
        return _finish(run) if group is None or group.main or run.sharded else _follower_result(run)
    except RuntimeError as exc:
        if group is not None and is_group_error(exc):
            raise GroupLost(f"a rank of the trial's process group is gone ({str(exc).splitlines()[0][:200]})") \
                from exc
        raise
    finally:
        if run is not None and run.member is not None:
            run.member.leave()
        if vocab is not None:
            vocab.restore(model)
        if run is not None and run.mask_hook is not None:
            run.mask_hook.remove()
        if run is not None and run.graphs is not None:
            run.state.cuda_graphs = run.graphs.describe()


def _start(model: torch.nn.Module, data: PreparedData, hp: Hyperparameters, settings: TrainSettings,
           device: torch.device, vocab: SmallVocabulary | None, callback: Callback, setup_time: float,
           group: Group | None = None, fused: bool = False) -> Run:
    """Optimizer, schedule, seeded batch order and dropout, the evaluation subset and the checkpoint tracker."""
    entered = time.perf_counter()
    n = len(data.train)
    state = TrainingState(total_steps=steps_per_epoch(n, hp.batch_size) * hp.epochs, train_examples=n,
                          reports_per_epoch=settings.reports_per_epoch)
    trainer = group.wrap(model, device, settings.distributed) if group is not None else model  # before the optimizer
    capture = settings.cuda_graphs and device.type == "cuda"
    optimizer = make_optimizer(model, hp, device, capturable=capture)
    scheduler = make_scheduler(optimizer, hp, state.total_steps)
    if vocab is not None:
        vocab.track(optimizer)
    generator = torch.Generator().manual_seed(hp.seed)
    if not fused:  # a fused group's dropout masks are its passes' (and the process's seed is its members' heads')
        torch.manual_seed(hp.seed)  # dropout masks
    if device.type == "cuda" and not fused:  # a fused member's peak is its group's (:meth:`Fuser.join`)
        torch.cuda.reset_peak_memory_stats(device)
    limit = settings.intermediate_eval_samples
    subset = (data.validation.head(limit) if limit is not None and limit < data.validation.example_count
              else data.validation)
    selection = settings.selection
    task = data.task
    micro = hp.micro_batch_size or hp.batch_size
    run = Run(model=model, data=data, hp=hp, device=device, task=task, settings=settings,
               state=state, optimizer=optimizer, scheduler=scheduler,
               trainable=[p for p in model.parameters() if p.requires_grad], generator=generator, subset=subset,
               tracker=Tracker(selection) if selection is not None else None,
               generate_always=selection is not None and generates(task, selection.metric),
               every_epoch=selection is not None and selection.active, vocab=vocab, callback=callback,
               scaler=torch.amp.GradScaler(device.type) if settings.precision.scaler else None,
               micro=min(micro, hp.batch_size), shrink_on_oom=not hp.micro_batch_size and group is None,
               loss_total=torch.zeros((), device=device) if device.type == "cuda" or settings.cuda_graphs else None,
               widths=_trial_widths(data, hp, settings, device, generator),
               mask_hook=additive_mask(model, compute_dtype(model, settings.precision.autocast)),
               group=group, trainer=trainer)
    state.micro_batch_size = run.micro
    if settings.cuda_graphs and run.scaler is not None:
        state.cuda_graphs = "off: fp16's loss scaler reads the gradients on the host every step"
    elif settings.cuda_graphs:
        run.graphs = StepGraphs(lambda batch: _graph_passes(run, batch), lambda x, y: _pass_loss(run, x, y), optimizer,
                                run.trainable, hp.max_grad_norm, run.loss_total, capture=capture)
    model.train()
    state.setup_time = setup_time + (time.perf_counter() - entered)  # everything before the first training step
    return run


def _trial_widths(data: PreparedData, hp: Hyperparameters, settings: TrainSettings, device: torch.device,
                  generator: torch.Generator) -> tuple[int, ...]:
    """The padded widths of a GPU trial's batches (:func:`bucket_widths`, aligned to 16 bytes of the compute
    dtype: what SDPA's mask and tensor cores want); none on the CPU."""
    if device.type != "cuda":
        return ()
    dtype = settings.precision.autocast or settings.precision.master
    return bucket_widths(data.train.lengths, hp.batch_size, generator, align=128 // torch.finfo(dtype).bits)


def _resume(run: Run, durability: Durability) -> None:
    """Continue from ``durability.resume``: the run's state as the checkpoint holds it, or, when the checkpoint is
    another trial's or unreadable, the run as set up (step 0) with the reason said."""
    try:
        durable.restore(run, *durable.read(durability.resume), fork=durability.fork)
    except durable.CannotResume as exc:
        durability.resumed = {"refused": str(exc)}
        return
    durability.resumed = durable.summary(run)


def _epoch(run: Run, epoch: int) -> bool:
    """One pass over the training rows in length-grouped random batches (a resumed run's epoch from the batch it
    stopped after); True when training is to stop."""
    pos = run.pos
    if pos.epoch != epoch or pos.order is None:
        run.pos = pos = Position(epoch=epoch, order=run.generator.get_state())
    else:  # resumed mid-epoch: the same batches, from the one after the last trained
        run.generator.set_state(pos.order)
    order = length_grouped_batches(run.data.train.lengths, run.hp.batch_size, run.generator)
    run.t0 = time.perf_counter()
    if _reports_due(run, epoch):  # a report the run stopped before
        return True
    for batch in chunks(run.data.train, order[pos.batches:], run.device, run.hp.batch_size, run.widths):
        _step(run, batch)
        if _reports_due(run, epoch):
            return True
    _clock(run)
    return False


def _clock(run: Run) -> None:
    """Add the training time since the last call (or the epoch's start) to the state."""
    now = time.perf_counter()
    run.state.train_time += now - run.t0
    run.t0 = now


def _reports_due(run: Run, epoch: int) -> bool:
    """Take the report the rows seen have reached, if one is due (the last of them, when several are): evaluate,
    tell, record a checkpoint, save the run's state; True when training is to stop."""
    pos, per_epoch, n = run.pos, run.state.reports_per_epoch, run.state.train_examples
    crossed, upcoming = 0, pos.next_report
    while upcoming <= per_epoch and pos.seen * per_epoch >= upcoming * n:
        crossed, upcoming = upcoming, upcoming + 1
    if not crossed:
        return False
    _clock(run)
    stop = _report(run, epoch, crossed)
    pos.next_report = upcoming
    last = epoch == run.hp.epochs - 1 and crossed == per_epoch
    if run.durable is not None and not (stop or last):
        _save(run)
    run.t0 = time.perf_counter()
    return stop


def _save(run: Run) -> None:
    """Save the run's state through its durability (rank 0 of a process group; a fused member away from its
    group's passes meanwhile)."""
    if run.group is not None and not run.group.main:
        return
    _clock(run)
    with run.member.away() if run.member is not None else nullcontext():
        run.durable.save(lambda path: durable.write(path, run), durable.summary(run))
    run.saved_at = time.perf_counter()


def _step(run: Run, batch: Batch) -> None:
    """One optimizer step on ``batch``: replayed from a CUDA graph (``model.cuda_graphs``), else eagerly
    (:func:`_update`); then the schedule, the counts, an interrupt held, the callback."""
    state = run.state
    loss = None
    if run.graphs is not None:
        try:
            loss = run.graphs.step(batch)
        except torch.cuda.OutOfMemoryError:
            run.graphs.off = "off: out of memory (the trial went on eagerly)"
        if run.graphs.off is not None and run.graphs.off.startswith("off: out of memory"):
            state.cuda_graphs, run.graphs = run.graphs.describe(), None
            run.optimizer.zero_grad(set_to_none=True)
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
    if loss is None:
        loss = _update(run, batch)
    state.step += 1
    run.scheduler.step()
    lengths = batch.chunk.lengths
    state.examples_seen += len(batch)
    state.tokens_seen += int(lengths[batch.rows].sum())
    state.padded_tokens_seen += sum(len(lengths[p]) * _width(run, batch.chunk, p) for p in batch.parts(run.micro))
    state.loss = loss.detach()
    run.pos.batches, run.pos.seen = run.pos.batches + 1, run.pos.seen + len(batch)
    stopping = interrupts.requested() if run.group is None else run.group.any(interrupts.requested())
    if run.durable is not None and (stopping or time.perf_counter() - run.saved_at >= run.durable.every_s):
        _save(run)  # at a step boundary: a signal loses nothing
    if stopping:
        check_interrupt()  # the rank that holds the signal raises it; the others stop at the same step
        raise KeyboardInterrupt()
    run.callback.on_step(state)


def _update(run: Run, batch: Batch) -> torch.Tensor:
    """The eager update: forward and backward over ``batch`` in micro-batches of ``run.micro`` rows, clipping, AdamW;
    return the loss. An out-of-memory error retries the step with half the micro-batch when the batch size chose it;
    a non-finite loss stops the run (NonFiniteLoss: at once on the CPU; on a GPU at the next report, so that no step
    waits for the device)."""
    while True:
        try:
            loss = _accumulate(run, batch)
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
    _check_finite(run, loss)
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    if run.hp.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.trainable, run.hp.max_grad_norm, foreach=True)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss


def _width(run: Run, chunk: Encoded, rows: slice) -> int:
    """The padded width of a pass over ``rows``: their longest row, rounded up to one of the trial's widths on a GPU
    (:func:`hpsearch.finetune.batching.bucket_widths`)."""
    return rounded_width(run.widths, int(chunk.lengths[rows].max()))


def _accumulate(run: Run, batch: Batch) -> torch.Tensor:
    """Forward and backward over ``batch`` in micro-batches; return the batch's loss (each micro-batch's mean loss
    weighted by its share of the batch's units: rows, or learned tokens, as the task counts them), so that the
    gradients are those of one pass over the whole batch."""
    if run.group is not None:
        return _accumulate_share(run, batch, run.group)
    if run.member is not None:
        return _accumulate_fused(run, batch, run.member)
    chunk, task = batch.chunk, run.task
    parts = batch.parts(run.micro)
    if len(parts) == 1:
        loss = _forward_loss(run, chunk, batch.rows, chunk.labels_of(batch.rows, run.device))
        _backward(run, loss)
        return loss.detach()
    labels = [chunk.labels_of(part, run.device) for part in parts]
    units = [_units(task, part_labels) for part_labels in labels]
    total = sum(units)
    loss_sum = torch.zeros((), device=run.device)
    for part, part_labels, n in zip(parts, labels, units):
        loss = _forward_loss(run, chunk, part, part_labels) * (n / total)
        _backward(run, loss)
        loss_sum = loss_sum + loss.detach()
    return loss_sum


def _accumulate_fused(run: Run, batch: Batch, member: Member) -> torch.Tensor:
    """:func:`_accumulate` for a member of a fused group: each micro-batch's pass runs with the other members'."""
    chunk, device, parts = batch.chunk, run.device, batch.parts(run.micro)
    labels = [chunk.labels_of(part, device) for part in parts]
    units = [_units(run.task, part_labels) for part_labels in labels] if len(parts) > 1 else [1]
    losses = [member.forward_backward(chunk.batch(part, device, width=_width(run, chunk, part)), part_labels,
                                      n / sum(units), run.scaler.scale if run.scaler is not None else None,
                                      per_token=not chunk.fixed_width_labels)
              for part, part_labels, n in zip(parts, labels, units)]
    return losses[0] if len(losses) == 1 else torch.stack(losses).sum()


def _accumulate_share(run: Run, batch: Batch, group: Group) -> torch.Tensor:
    """This rank's share of a batch: every ``world``-th row from its ``rank``-th, in micro-batches, each loss
    weighted by its share of the whole batch's units times ``world`` (DistributedDataParallel averages the ranks'
    gradients, so their sum is one pass over the whole batch); return this rank's part of the batch's loss."""
    chunk, task = batch.chunk, run.task
    total = float(_units(task, chunk.labels_of(batch.rows, torch.device("cpu"))))
    mine, scale = batch.share(group.rank, group.world), float(group.world)
    if mine is None:  # fewer rows than ranks: still take part in the all-reduce, with a zero-weighted row
        mine, scale = Batch(chunk, slice(batch.rows.start, batch.rows.start + 1)), 0.0
    parts = mine.parts(run.micro)
    loss_sum = torch.zeros((), device=run.device)
    for i, part in enumerate(parts):
        labels = chunk.labels_of(part, run.device)
        with group.no_sync(run.trainer) if i < len(parts) - 1 else nullcontext():  # gradients reduced once, at the end
            loss = _forward_loss(run, chunk, part, labels) * (_units(task, labels) / total * scale)
            _backward(run, loss)
        loss_sum = loss_sum + loss.detach() / group.world
    return loss_sum


def _forward_loss(run: Run, chunk: Encoded, rows: slice, labels: torch.Tensor) -> torch.Tensor:
    """The task's mean loss on the training rows ``rows`` of ``chunk`` (whose ``labels`` the caller gathered)."""
    return _pass_loss(run, chunk.batch(rows, run.device, width=_width(run, chunk, rows)), labels)


def _pass_loss(run: Run, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The task's mean loss of one forward pass over ``inputs``, under the trial's autocast (without its weight
    cache when the pass may be captured in a CUDA graph)."""
    with autocast(run.device, run.autocast, cache=run.graphs is None):
        logits = run.task.forward(run.trainer or run.model, inputs, labels)
    return run.task.loss(logits, labels)


def _graph_passes(run: Run, batch: Batch) -> list[tuple[dict[str, torch.Tensor], torch.Tensor, float]]:
    """A batch's passes for :class:`StepGraphs`: the whole batch in one pass (micro-batches, whose loss weights
    change from batch to batch, are not captured: they run the same code eagerly)."""
    chunk = batch.chunk
    parts = batch.parts(run.micro)
    if len(parts) > 1:
        labels = [chunk.labels_of(part, run.device) for part in parts]
        units = [_units(run.task, part_labels) for part_labels in labels]
        total = sum(units)
        return [(chunk.batch(part, run.device, width=_width(run, chunk, part)), part_labels, n / total)
                for part, part_labels, n in zip(parts, labels, units)]
    rows = batch.rows
    return [(chunk.batch(rows, run.device, width=_width(run, chunk, rows)), chunk.labels_of(rows, run.device), 1.0)]


def _backward(run: Run, loss: torch.Tensor) -> None:
    (run.scaler.scale(loss) if run.scaler is not None else loss).backward()


def _units(task: Task, labels: torch.Tensor) -> torch.Tensor | int:
    """How many units a batch's mean loss averages over: the task's ``loss_units`` (learned tokens), else rows."""
    count = getattr(task, "loss_units", None)
    return count(labels) if count is not None else labels.shape[0]


def _check_finite(run: Run, loss: torch.Tensor) -> None:
    """Stop on a non-finite loss: on the CPU now; on a GPU add it to the device's running sum, which
    :func:`_raise_nonfinite` reads at each report."""
    if run.loss_total is None:
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"training loss became {loss.item()} at step {run.state.step + 1}")
        return
    run.loss_total = run.loss_total + loss.detach()


def _raise_nonfinite(run: Run) -> None:
    """Raise NonFiniteLoss if a GPU step's loss was not finite since the last report (one read of the device)."""
    if run.loss_total is not None and not bool(torch.isfinite(run.loss_total)):
        raise NonFiniteLoss(f"training loss became non-finite between steps {run.checked_step + 1} and "
                            f"{run.state.step}")
    run.checked_step = run.state.step


def _report(run: Run, epoch: int, crossed: int) -> bool:
    """Evaluate for report ``crossed`` of this epoch, tell the callback, and record a checkpoint; True to stop.
    Within a group, rank 0 does this and tells the other ranks whether to stop (also when it raises)."""
    group = run.group
    if run.member is not None:
        with run.member.away():  # the other members' passes do not wait for this evaluation
            return _saved_if_stopped(run, epoch, crossed)
    if group is None:
        return _saved_if_stopped(run, epoch, crossed)
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


def _saved_if_stopped(run: Run, epoch: int, crossed: int) -> bool:
    """:func:`_evaluate_and_tell`; a signal that stops its evaluation saves the run as it stood before it (the
    report to take again)."""
    try:
        return _evaluate_and_tell(run, epoch, crossed)
    except KeyboardInterrupt:
        if run.durable is not None:
            _save(run)
        raise


def _evaluate_and_tell(run: Run, epoch: int, crossed: int) -> bool:
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


def _follower_result(run: Run) -> TrainResult:
    """What a rank other than 0 returns: how far it trained (rank 0's result holds the metrics)."""
    state = run.state
    return TrainResult(metrics={}, device=str(run.device), steps=state.step, epochs_completed=state.epochs_completed,
                       train_time_s=state.train_time, eval_time_s=0.0, setup_time_s=state.setup_time,
                       train_examples_per_s=state.examples_per_s, train_tokens_per_s=state.tokens_per_s,
                       peak_memory_mb=peak_memory_mb(run.device))


def _finish(run: Run) -> TrainResult:
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
                       selection=tracker.attrs() if tracker is not None else {},
                       cuda_graphs=run.graphs.describe() if run.graphs is not None else state.cuda_graphs)

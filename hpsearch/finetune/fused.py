"""Fused trials: several trials trained as one model, one forward and one backward a step for all of them.

Each member is an ordinary trial in a thread of its own that runs the ordinary loop (:func:`hpsearch.finetune.loop
.train`: its own model object, optimizer, schedule, warm-up, batch order, clipping, micro-batches, evaluations,
checkpoints); only the training passes meet here. A member's pass (:meth:`Member.forward_backward`) waits until
every member that is training has sent one; then the :class:`Fuser` runs them as one: the batches stacked (rows
padded to the largest batch with copies of a member's first row, columns to the widest), one forward of the
executor (:mod:`hpsearch.finetune.executor`: the model once more, reading each member's parameters), each member's
loss from its own rows, one backward that leaves each member's gradients on its own parameters. A member that
evaluates, reports or is set up is away: the others do not wait for it.

What must agree inside a pass, or the pass is split (each part still fused): whether members are LoRA or fully
fine-tuned, and, for a model whose attention cannot be split by member (:mod:`hpsearch.finetune.fused_dropout`),
the hidden dropout. Otherwise each member drops with its own probability. Dropout masks are drawn for the pass, so
a member with dropout draws other masks than it would alone; with dropout 0 a member's losses and weights equal its
training alone to rounding, whatever dropout the members beside it have (``tests/finetune/test_fused.py``).

LoRA members share one base: their models adopt the same weight tensors (:func:`hpsearch.finetune.model
.build_model`'s ``base``), as does the executor. A kept model is merged from a private copy (:func:`private`).

Thread safety
-------------
A group lives in one process; its members are threads (:func:`hpsearch.study.runner._run_fused` starts one per
member). The group has no thread of its own: a pass runs in the thread of a member waiting in
:meth:`Member.forward_backward`, the first to find every training member's request in; one pass at a time. The
locks of fused training, and everything else a member thread shares, are these (none is taken while another is
held, but :attr:`Fuser.rng_lock` around a pass):

- ``Fuser._cond`` guards the group's bookkeeping: its members and each one's state (away, left, when last heard
  from), the requests waiting, whether a pass runs. It is held for bookkeeping only, never while computing.
- :attr:`Fuser.rng_lock` is the process's global random generator: held while a member's model is built (its
  head's initialization draws from it) and while a pass runs (its dropout masks do), so neither changes the
  other's numbers.
- Outside this module: :func:`hpsearch.study.runner.asking` creates one trial at a time under its lock (and the
  study's, across workers); ``Tickets`` counts ``--trials``; ``Objective._counting`` counts completed and
  metric-failed trials; :mod:`hpsearch.interrupts` holds a signal (or a sibling's stopping error) that every
  member's step, and every member waiting for a pass, checks.

Ownership
---------
While a pass runs, its thread reads the parameters of the members in it and writes their gradients, and uses the
executor and its :class:`~hpsearch.finetune.members.PassState`; those members are blocked in
:meth:`Member.forward_backward` until their request is done. A member that is away (:meth:`Member.away`:
evaluating, reporting, writing a checkpoint, finishing) or has left may do anything with its own model, optimizer
and data, but never write the shared base (LoRA members: a kept model merges a :func:`private` copy). A member
that finishes leaves before it restores its best checkpoint and runs its final evaluation.

Errors
------
Whatever raises while a pass runs (planning, stacking, the forward, a loss, the backward, the pass's end) reaches
every member of that pass, and only those: each raises the original exception (a copy of it where it can be copied,
carrying the original traceback), and its loop decides (out of memory: that member halves its micro-batch; anything
else fails its trial or stops the worker). A member waiting for a pass stops at a held interrupt (Ctrl-C, SIGTERM,
a sibling's error that stops the worker) unless its request is already in a running pass. A member that waits
longer than :data:`STALL_S` for a training member that sent nothing raises :class:`FusedStall` naming it.
"""
from __future__ import annotations

import collections
import copy
import itertools
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .. import interrupts
from ..errors import HpsearchError
from ..tasks import Task
from ..tasks.base import IGNORE
from .device import autocast
from .executor import Executor, assemble
from .fused_dropout import SENTINEL_DROPOUT
from .members import MemberView, PassState, view_of

CALIBRATE_EVERY = 16
"""Passes between refits of a CPU group's pass cost (over the last 64)."""
STALL_S = 600.0
"""Seconds members wait for a training member that sends no pass (and is not away) before they stop with a
:class:`FusedStall`: what a member does between two passes (its optimizer step, the next batch) takes
milliseconds; anything long (evaluations, checkpoints) it does away."""
WAIT_S = 0.5
"""How often a member waiting for a pass looks for an interrupt or a stalled member."""

__all__ = ["SENTINEL_DROPOUT", "Fuser", "FusedStall", "Member", "PassCost", "plan_passes", "private"]
_ids = itertools.count(1)


class FusedStall(HpsearchError):
    """Members of a fused group waited :data:`STALL_S` for a member that sent no pass and was not away."""


@dataclass(eq=False)
class _Request:
    """One member's pass: its batch and what its loss is weighted by."""

    member: Member
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    weight: float
    scale: Callable[[torch.Tensor], torch.Tensor] | None
    per_token: bool
    """Whether 2-D labels label positions (padded with the ignored index: the logits are cut to their width)."""
    loss: torch.Tensor | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(eq=False)
class Member:
    """A trial training in a fused group (:meth:`Fuser.join`)."""

    fuser: Fuser
    view: MemberView
    dropout: float
    number: int
    name: str = ""
    """How errors name it: its thread's name (a study's member threads are named after their trial)."""
    away_depth: int = 0
    left: bool = False
    heard: float = field(default_factory=time.monotonic)
    """When it last sent a pass, got one back, went away or came back (for :data:`STALL_S`)."""

    def forward_backward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, weight: float = 1.0,
                         scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         per_token: bool = True) -> torch.Tensor:
        """This member's mean loss on ``inputs`` times ``weight``, its gradients accumulated on its parameters,
        computed in one pass with the other members training now (``scale``: fp16's loss scaler; ``per_token``:
        2-D labels label positions, not a fixed-width target such as a span's start and end)."""
        return self.fuser._submit(_Request(self, inputs, labels, weight, scale, per_token))

    @contextmanager
    def away(self) -> Iterator[None]:
        """While this member evaluates, reports or writes a checkpoint, the others' passes do not wait for it."""
        self.fuser._set_away(self, +1)
        try:
            yield
        finally:
            self.fuser._set_away(self, -1)

    def leave(self) -> None:
        """No more passes from this member (it finished, or stopped); idempotent."""
        self.fuser._leave(self)


class Fuser:
    """The passes of a fused group of trials, in one process: up to ``size`` members training at once (the thread
    safety, ownership and errors contract is the module's docstring).

    ``build_executor`` makes the executor's model (the model for the space with the shared ``base``, dropout
    :data:`SENTINEL_DROPOUT`, no adapters), when the first member joins; ``task`` computes the members' losses;
    ``device`` and ``dtype`` (the autocast dtype, or None) are the group's. :func:`hpsearch.finetune.recipe.fuser_for`
    makes one for a space.
    """

    def __init__(self, size: int, task: Task, device: torch.device, dtype: torch.dtype | None,
                 build_executor: Callable[[], torch.nn.Module], base: dict[str, torch.Tensor] | None = None,
                 cost: PassCost | None = None) -> None:
        if size < 1:
            raise ValueError(f"a fused group holds at least 1 member, not {size!r}")
        self.size, self.task, self.device, self.dtype = size, task, device, dtype
        self.cost = cost or PassCost()
        """What a pass costs, to decide which members share one (default: launches only, so every step is one);
        on a CPU refitted to the passes' own times as they run (:meth:`_calibrate`)."""
        self._timed: collections.deque[tuple[int, float]] = collections.deque(maxlen=4 * CALIBRATE_EVERY)
        self.base = base
        self._shared = {t.untyped_storage().data_ptr() for t in (base or {}).values()}
        """The pretrained body's weights that LoRA members' models and the executor adopt (one copy)."""
        self.id = next(_ids)
        self.rng_lock = threading.RLock()
        """The process's global random generator: held while a member's model is built (its head's
        initialization) and while a pass runs (its dropout masks)."""
        self._build_executor = build_executor
        self.executor: Executor | None = None
        """The assembled executor (:func:`hpsearch.finetune.executor.assemble`), once the first member joined."""
        self._state = PassState()
        self._cond = threading.Condition()
        self._members: list[Member] = []
        self._pending: list[_Request] = []
        self._running = False
        self._numbers = itertools.count()
        self.passes = 0
        """Passes run (each one forward and one backward over its members' batches)."""
        self.member_passes = 0
        """Member passes they ran (``member_passes / passes``: how many members a pass fused, on average)."""
        self.split_passes = 0
        """Passes run apart from the others of their step: padding them together cost more (:func:`plan_passes`)."""

    @property
    def per_member_dropout(self) -> bool:
        """Whether a pass applies each member's own hidden dropout (else passes group members by dropout)."""
        return self.executor is not None and self.executor.per_member_dropout

    # -- members -----------------------------------------------------------------------------------------------
    def join(self, model: torch.nn.Module, dropout: float) -> Member:
        """Add a member training ``model`` (its parameters as the loop will train them: after any vocabulary
        shrink), whose hidden dropout is ``dropout``."""
        with self.rng_lock:
            if self.executor is None:
                self.executor = assemble(self._build_executor(), self._state, self.dtype)
                if self.device.type == "cuda":  # a member's peak memory is its group's, from here on
                    torch.cuda.reset_peak_memory_stats(self.device)
        view = view_of(model, self._shared)
        member = Member(self, view, dropout, next(self._numbers), threading.current_thread().name)
        with self._cond:
            self._members.append(member)
            self._state.forget()
        return member

    def _set_away(self, member: Member, delta: int) -> None:
        with self._cond:
            member.away_depth += delta
            member.heard = time.monotonic()
            self._cond.notify_all()

    def _leave(self, member: Member) -> None:
        with self._cond:
            member.left = True
            if member in self._members:
                self._members.remove(member)
                self._state.forget()
            self._cond.notify_all()

    @property
    def members(self) -> int:
        """Members in the group now."""
        with self._cond:
            return len(self._members)

    # -- passes ------------------------------------------------------------------------------------------------
    def _submit(self, request: _Request) -> torch.Tensor:
        member = request.member
        with self._cond:
            member.heard = time.monotonic()
            self._pending.append(request)
            self._cond.notify_all()
            while not request.done:
                if not self._running and self._ready():
                    batch, self._pending, self._running = self._pending, [], True
                    self._cond.release()
                    try:
                        with self.rng_lock:  # a head initialized meanwhile would read the masks' random numbers
                            self._run(batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._cond.notify_all()
                    continue
                if request in self._pending:  # not in a pass yet: it may be withdrawn
                    stalled = self._stalled()
                    if stalled or interrupts.requested():
                        self._pending.remove(request)
                        self._cond.notify_all()
                        interrupts.check()
                        if stalled:
                            raise FusedStall(self._stall_message(stalled))
                        self._pending.append(request)  # the signal was taken meanwhile: wait on
                self._cond.wait(timeout=WAIT_S)
            member.heard = time.monotonic()
        if request.error is not None:
            raise request.error
        return request.loss

    def _training(self) -> list[Member]:
        return [m for m in self._members if m.away_depth == 0 and not m.left]

    def _ready(self) -> bool:
        """Whether every member that is training has sent its pass."""
        if not self._pending:
            return False
        waiting = {id(r.member) for r in self._pending}
        return all(id(m) in waiting for m in self._training())

    def _stalled(self) -> list[Member]:
        """The training members that sent no pass for :data:`STALL_S` while others wait."""
        waiting = {id(r.member) for r in self._pending}
        now = time.monotonic()
        return [m for m in self._training() if id(m) not in waiting and now - m.heard > STALL_S]

    def _stall_message(self, stalled: list[Member]) -> str:
        names = ", ".join(m.name or f"member {m.number}" for m in stalled)
        return (f"fused group {self.id}: {names} sent no training pass for {STALL_S:g} s while "
                f"{len(self._pending) + 1} member(s) waited for it; stopped waiting")

    def _run(self, batch: list[_Request]) -> None:
        """Run ``batch``'s passes: fused in parts whose members agree on what cannot differ inside a pass, each
        split further where padding members to one shape would cost more than the launches it saves. Whatever
        raises reaches the requests it concerns (:func:`_fail`); every request is done when this returns."""
        try:
            parts = self._plan(batch)
            for part in parts:
                try:
                    started = time.perf_counter()
                    self._pass(part)
                    if self.device.type == "cpu":  # a CPU's ops are done when they return: the pass is timed as is
                        self._calibrate(_tokens(part), time.perf_counter() - started)
                except BaseException as exc:  # out of memory, a bug: each member's loop decides
                    _fail(part, exc)
                finally:
                    self._state.end()
                    self._done(part)
        except BaseException as exc:  # planning, or the end of a pass
            _fail([r for r in batch if not r.done], exc)
        finally:
            self._done(batch)

    def _done(self, requests: list[_Request]) -> None:
        with self._cond:
            for r in requests:
                r.done = True
            self._cond.notify_all()

    def _plan(self, batch: list[_Request]) -> list[list[_Request]]:
        """``batch`` in the parts its passes run: by kind (LoRA or not; the dropout, without per-member dropout),
        each planned by cost (:func:`plan_passes`), members ordered by dropout (equal ones side by side: one
        attention call)."""
        kinds: dict[tuple, list[_Request]] = {}
        for r in batch:
            key = (r.member.view.lora,) if self.per_member_dropout else (r.member.view.lora, r.member.dropout)
            kinds.setdefault(key, []).append(r)
        parts = [sorted(part, key=lambda r: r.member.dropout)
                 for kind in kinds.values() for part in plan_passes(kind, self.cost)]
        self.split_passes += len(parts) - len(kinds)
        return parts

    def _calibrate(self, tokens: int, seconds: float) -> None:
        """Fit :attr:`cost` to the passes timed so far (a CPU's): the estimate from the model counts only matrix
        products, while a small model's passes also spend per token on attention, norms and element-wise ops (20x
        the estimate on the tiny BERT, bench/results/FUSED.md)."""
        self._timed.append((tokens, seconds))
        if len(self._timed) % CALIBRATE_EVERY or len({t for t, _ in self._timed}) < 2:
            return
        n = len(self._timed)
        mean_t, mean_s = sum(t for t, _ in self._timed) / n, sum(s for _, s in self._timed) / n
        var = sum((t - mean_t) ** 2 for t, _ in self._timed)
        slope = max(0.0, sum((t - mean_t) * (s - mean_s) for t, s in self._timed) / var)
        self.cost = PassCost(fixed_s=max(0.0, mean_s - slope * mean_t), token_s=slope)

    def _pass(self, part: list[_Request]) -> None:
        """One forward and one backward over ``part``'s batches."""
        rows = max(len(r.labels) for r in part)
        inputs = _stack_inputs([r.inputs for r in part], rows)
        labels = _stack_labels([r.labels for r in part], rows)
        self.executor.set_dropout(part[0].member.dropout)
        width = max(_shape(r)[1] for r in part)
        self._state.begin([r.member.view for r in part], rows, [r.member.dropout for r in part],
                          batched=self.cost.launch_bound(len(part) * rows * width))
        with autocast(self.device, self.dtype):
            logits = self.task.forward(self.executor, inputs, labels)
        total = None
        for k, r in enumerate(part):
            n = len(r.labels)
            mine = logits[k * rows: k * rows + n]
            loss = self.task.loss(_trim(mine, r.labels) if r.per_token else mine, r.labels) * r.weight
            r.loss = loss.detach()
            term = r.scale(loss) if r.scale is not None else loss
            total = term if total is None else total + term
        total.backward()
        self.passes += 1
        self.member_passes += len(part)


def _fail(requests: list[_Request], exc: BaseException) -> None:
    """Give ``exc`` to each of ``requests`` that has no result yet: its own copy (the original traceback, cause and
    context kept) where the exception can be copied, else the exception itself."""
    for r in requests:
        if r.error is None:
            r.loss, r.error = None, _copy(exc)


def _copy(exc: BaseException) -> BaseException:
    try:
        mine = copy.copy(exc)
    except Exception:  # an exception that cannot be rebuilt from its arguments
        return exc
    if type(mine) is not type(exc):
        return exc
    mine.__cause__, mine.__context__, mine.__suppress_context__ = exc.__cause__, exc.__context__, \
        exc.__suppress_context__
    return mine.with_traceback(exc.__traceback__)


@dataclass(frozen=True)
class PassCost:
    """What one fused pass costs, to decide which members share it: a part that does not grow with the pass (its
    kernels' launches and the Python around them) and a part per padded token (its arithmetic). Members of one
    pass are padded to its most rows and its widest batch, so a pass of unlike batches computes tokens nobody
    learns from; :func:`plan_passes` weighs that against the launches a pass saves.

    >>> PassCost(fixed_s=1e-3, token_s=1e-6).of([(16, 64), (16, 32)])   # 2 x 16 rows x 64 columns, plus launches
    0.003048
    """

    fixed_s: float = 1.0
    """Seconds a pass costs whatever its size (:attr:`hpsearch.finetune.precision.Workload.launch_s`)."""
    token_s: float = 0.0
    """Seconds a pass costs per padded token (:attr:`hpsearch.finetune.precision.Workload.token_s`)."""

    def launch_bound(self, tokens: int) -> bool:
        """Whether a pass of ``tokens`` padded tokens takes longer to launch than to compute."""
        return self.fixed_s >= self.token_s * tokens

    def of(self, shapes: list[tuple[int, int]]) -> float:
        """A pass over batches of ``shapes`` (rows, width), each padded to the largest of both."""
        rows, width = max(r for r, _ in shapes), max(w for _, w in shapes)
        return round(self.fixed_s + len(shapes) * rows * width * self.token_s, 9)


def plan_passes(requests: list[_Request], cost: PassCost) -> list[list[_Request]]:
    """``requests`` in passes of the least estimated cost: ordered by shape, cut where padding a batch up to the
    next ones costs more than the pass it saves (optimal over cuts of that order; at most a few members).

    A group of small models (a launch-bound pass) runs as one pass whatever the shapes; a group whose arithmetic
    dominates (MiniLM on a CPU) pads only batches of nearly the same shape together."""
    if len(requests) <= 1 or cost.token_s <= 0:
        return [requests] if requests else []
    ordered = sorted(requests, key=lambda r: _shape(r))
    shapes = [_shape(r) for r in ordered]
    best, cut = [0.0] + [math.inf] * len(ordered), [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        for start in range(end):
            total = best[start] + cost.of(shapes[start:end])
            if total < best[end]:
                best[end], cut[end] = total, start
    parts, end = [], len(ordered)
    while end:
        parts.append(ordered[cut[end]:end])
        end = cut[end]
    return parts[::-1]


def _tokens(part: list[_Request]) -> int:
    """The padded tokens of a pass over ``part``."""
    shapes = [_shape(r) for r in part]
    return len(shapes) * max(r for r, _ in shapes) * max(w for _, w in shapes)


def _shape(request: _Request) -> tuple[int, int]:
    """A member's batch as (rows, width)."""
    ids = request.inputs["input_ids"]
    return ids.shape[0], ids.shape[1] if ids.ndim > 1 else 1


def _pad(t: torch.Tensor, rows: int, width: int | None, value: float) -> torch.Tensor:
    """``t`` with ``rows`` rows (copies of its first added) and, for 2-D ``t``, ``width`` columns (``value``
    added on the right)."""
    if width is not None and t.ndim >= 2 and t.shape[1] < width:
        t = F.pad(t, (0, 0) * (t.ndim - 2) + (0, width - t.shape[1]), value=value)
    if t.shape[0] < rows:
        t = torch.cat([t, t[:1].expand(rows - t.shape[0], *t.shape[1:])])
    return t


def _stack_inputs(batches: list[dict[str, torch.Tensor]], rows: int) -> dict[str, torch.Tensor]:
    """The members' inputs as one batch, member-major, each padded to ``rows`` rows and the widest columns (ids
    and token types with 0, the attention mask with False: padding attends nowhere)."""
    keys = list(batches[0])
    if any(list(b) != keys for b in batches):
        raise RuntimeError(f"fused members' batches differ in their inputs: {[list(b) for b in batches]}")
    width = max(b["input_ids"].shape[1] for b in batches)
    return {key: torch.cat([_pad(b[key], rows, width, 0) for b in batches]) for key in keys}


def _stack_labels(labels: list[torch.Tensor], rows: int) -> torch.Tensor:
    """The members' labels as one batch (per-token labels padded with the ignored index)."""
    width = max(t.shape[1] for t in labels) if labels[0].ndim >= 2 else None
    return torch.cat([_pad(t, rows, width, IGNORE if not t.is_floating_point() else 0.0) for t in labels])


def _trim(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A member's per-position logits cut to its labels' width (the pass was padded to the widest)."""
    if labels.ndim >= 2 and logits.ndim >= 3 and logits.shape[1] > labels.shape[1]:
        return logits[:, : labels.shape[1]]
    return logits


def private(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a member's model that shares no tensor with the group (to merge its adapters into, or to keep)."""
    return copy.deepcopy(model)

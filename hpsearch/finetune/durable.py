"""Durable trials, the training side: a run's whole state at a step boundary, written to one file and read back, so
that a trial stopped anywhere (a killed or preempted worker, a time limit, Ctrl-C) continues where it was, on any
machine, and ends as it would have uninterrupted.

What a checkpoint holds: the trainable weights (a LoRA model's adapters and head, never the frozen base), the
optimizer's state and groups, the learning-rate schedule, fp16's loss scaler, the random states (Python's, NumPy's,
torch's CPU and CUDA generators, and the batch order's), where the run stands (its epoch, the batches of it done,
the next report), the micro-batch size an out-of-memory step left, the training counters and times, the reports'
history, early stopping and the best checkpoint kept (its weights too, for ``trial_value: best``), and the
vocabulary lever's decay. It is one safetensors file: the tensors by name, everything else as JSON in its
metadata; nothing is unpickled on reading.

The loop (:mod:`hpsearch.finetune.loop`) decides when: at every report, at least every :attr:`Durability.every_s`
seconds of training, and at the step boundary after SIGTERM or SIGINT arrives. Where a checkpoint goes is its
caller's (:mod:`hpsearch.study.durable`: the study's artifact store).

A fused member's dropout masks are its group's (drawn from the process's generator by whichever members share a
pass), so its checkpoint leaves the process's random states out: a resumed member trains on validly, not
bit-identically. A run of a process group (DDP) is written by rank 0.
"""
from __future__ import annotations

import json
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..errors import HpsearchError
from .run import CHECKPOINT_EVERY_S, FORKABLE, Durability, Position, Run

__all__ = ["CHECKPOINT_EVERY_S", "FORKABLE", "CannotResume", "Durability", "Position", "read", "restore", "summary",
           "write"]

FORMAT = 1
"""The layout of a checkpoint file's names and metadata; a file of another layout is not resumed from."""
_META = "hpsearch"


class CannotResume(HpsearchError):
    """A checkpoint that this run cannot continue from (another config, another model, another layout)."""


def summary(run: Run) -> dict[str, Any]:
    """Where ``run`` stands, as a checkpoint's pointer and a resumed trial record it."""
    s = run.state
    return {"step": s.step, "report": s.report, "epochs": round(s.epochs_completed, 4), "of_steps": s.total_steps}


def write(path: Path, run: Run) -> None:
    """``run``'s whole state, at a step boundary, into the file ``path``."""
    from safetensors.torch import save_file

    tensors, meta = _capture(run)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path),
              metadata={_META: json.dumps(meta)})


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint file's tensors and metadata; CannotResume for a file that is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a torn or foreign file: the run starts from step 0, saying why
        raise CannotResume(f"the checkpoint cannot be read ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CannotResume(f"the checkpoint's layout is {meta.get('format')!r}, this version reads {FORMAT}")
    return tensors, meta


def _capture(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    for name, p in _trainable(run).items():
        tensors[f"model/{name}"] = p
    optimizer = run.optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    tracker = run.tracker
    if tracker is not None and tracker.weights is not None:
        for name, value in tracker.weights.items():
            tensors[f"best/{name}"] = value
    pos = run.pos
    if pos.order is not None:
        tensors["rng/order"] = pos.order
    fused = run.member is not None
    if not fused:  # the process's generators are a fused member's group's, not its own
        tensors["rng/torch"] = torch.get_rng_state()
        if run.device.type == "cuda":
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = state
    state = run.state
    meta = {
        "format": FORMAT,
        "hyperparameters": run.hp.as_dict(),
        "shapes": {name: list(p.shape) for name, p in _trainable(run).items()},
        "optimizer": {"param_groups": _plain(optimizer["param_groups"]), "state": _plain(plain_state)},
        "scheduler": _plain(run.scheduler.state_dict()),
        "scaler": _plain(run.scaler.state_dict()) if run.scaler is not None else None,
        "position": {f.name: getattr(pos, f.name) for f in fields(Position) if f.name != "order"},
        "state": {k: getattr(state, k) for k in _STATE},
        "micro": run.micro,
        "checked_step": run.checked_step,
        "loss_total": None if run.loss_total is None else float(run.loss_total),
        "history": _plain(run.history),
        "metrics": _plain(run.metrics),
        "tracker": None if tracker is None else _plain({f.name: getattr(tracker, f.name) for f in fields(tracker)
                                                        if f.name not in ("policy", "weights", "extra")}),
        "tracker_extra": None if tracker is None or tracker.extra is None else float(tracker.extra),
        "vocab_decay": None if run.vocab is None else float(run.vocab.decay),
        "python_random": None if fused else _plain(random.getstate()),
        "numpy_random": None if fused else _numpy_state(),
    }
    return tensors, meta


_STATE = ("step", "examples_seen", "tokens_seen", "padded_tokens_seen", "report", "train_time", "eval_time")
"""The training counters a checkpoint carries (the setup time is the resumed process's own)."""


def restore(run: Run, tensors: dict[str, torch.Tensor], meta: dict[str, Any], fork: bool = False) -> None:
    """Put a checkpoint's state into ``run`` (set up by the loop for the same trial: the same hyperparameters and
    model; with ``fork``, another trial's, continued with some of :data:`FORKABLE` changed); CannotResume when it
    is another trial's."""
    trainable = _trainable(run)
    changed = sorted(k for k in set(meta["hyperparameters"]) | set(run.hp.as_dict())
                     if meta["hyperparameters"].get(k) != run.hp.as_dict().get(k))
    if [k for k in changed if not (fork and k in FORKABLE)]:
        raise CannotResume(f"the checkpoint was saved with other hyperparameters ({', '.join(changed)})")
    shapes = {name: list(p.shape) for name, p in trainable.items()}
    if meta["shapes"] != shapes:
        raise CannotResume("the checkpoint's trainable weights are not this model's (another model or vocabulary)")
    device = run.device
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(tensors[f"model/{name}"])
    _restore_optimizer(run.optimizer, tensors, meta["optimizer"])
    run.scheduler.load_state_dict(meta["scheduler"])
    if fork:
        _reschedule(run)
    if run.scaler is not None and meta["scaler"] is not None:
        run.scaler.load_state_dict(meta["scaler"])
    for key, value in meta["state"].items():
        setattr(run.state, key, value)
    run.micro = run.state.micro_batch_size = meta["micro"]
    run.checked_step = meta["checked_step"]
    if run.loss_total is not None and meta["loss_total"] is not None:
        run.loss_total = torch.tensor(meta["loss_total"], device=run.loss_total.device)
    run.history, run.metrics = list(meta["history"]), dict(meta["metrics"])
    if run.tracker is not None and meta["tracker"] is not None:
        for key, value in meta["tracker"].items():
            setattr(run.tracker, key, value)
        best = {k[len("best/"):]: v.to(device) for k, v in tensors.items() if k.startswith("best/")}
        run.tracker.weights = best or None
        run.tracker.extra = meta["tracker_extra"]
    if run.vocab is not None and meta["vocab_decay"] is not None:
        run.vocab.decay = meta["vocab_decay"]
    run.pos = Position(**meta["position"], order=tensors.get("rng/order"))
    if run.member is None and "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
        cuda = [tensors[k] for k in sorted(tensors, key=_cuda_index) if k.startswith("rng/cuda/")]
        if cuda and device.type == "cuda":
            torch.cuda.set_rng_state_all(cuda)
        version, state, gauss = meta["python_random"]
        random.setstate((version, tuple(state), gauss))
        _set_numpy_state(meta["numpy_random"])


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       saved: dict[str, Any]) -> None:
    """The optimizer's state and groups as saved (its groups' tensor-valued entries, such as a CUDA-graphed
    learning rate, keep their tensors and take the saved value in place)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in saved["state"].items():
        state.setdefault(int(index), {}).update(values)
    held = [{k: v for k, v in g.items() if torch.is_tensor(v)} for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    for group, tensors_of in zip(optimizer.param_groups, held):
        for key, tensor in tensors_of.items():
            tensor.fill_(float(group[key]))
            group[key] = tensor


def _reschedule(run: Run) -> None:
    """A fork's learning rate and weight decay from its own hyperparameters, at the schedule's point: the base rate
    replaced, the decayed group's decay replaced (hidden dropout is the model's, built with the fork's)."""
    scheduler, hp = run.scheduler, run.hp
    scheduler.base_lrs = [hp.learning_rate] * len(scheduler.base_lrs)
    rates = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for index, (group, rate) in enumerate(zip(run.optimizer.param_groups, rates)):
        group["initial_lr"] = hp.learning_rate
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate
        if index == 0:  # make_optimizer's decayed group (the other never decays)
            group["weight_decay"] = hp.weight_decay
    scheduler._last_lr = rates


def _trainable(run: Run) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in run.model.named_parameters() if p.requires_grad}


def _cuda_index(key: str) -> int:
    return int(key.rsplit("/", 1)[1]) if key.startswith("rng/cuda/") else -1


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: tensors as numbers (or lists), tuples as lists."""
    if torch.is_tensor(value):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # a NumPy scalar
        return value.item()
    return value


def _numpy_state() -> list[Any] | None:
    try:
        import numpy as np
    except ImportError:
        return None
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), pos, has_gauss, cached]


def _set_numpy_state(state: list[Any] | None) -> None:
    if state is None:
        return
    import numpy as np

    kind, keys, pos, has_gauss, cached = state
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))

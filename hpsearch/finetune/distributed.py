"""A trial across several devices (``--gpus-per-trial K``): K processes, one per device, joined in a
torch.distributed group (NCCL on GPUs, gloo on the CPU), training one config data-parallel (DDP).

Rank 0 alone talks to the study: it suggests, reports and prunes. It sends every other rank the trial's
hyperparameters (:meth:`Group.broadcast`) and, at each report, whether training stops (a pruned trial, an early
stop), so every rank trains the same config and stops at the same step; at every step the ranks agree whether a
signal arrived (:meth:`Group.any`), so an interrupt stops all of them at one step. A collective that fails (a rank
killed, a peer gone) raises :class:`GroupLost`: the trial fails and the group's processes exit.

The launcher (:func:`hpsearch.config.placement.place_groups`) sets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so ``torchrun --nproc-per-node K -m hpsearch run ...`` starts a group as well.
"""
from __future__ import annotations

import datetime as dt
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import HpsearchError

TIMEOUT_ENV = "HPSEARCH_DIST_TIMEOUT"
"""Seconds a collective waits for the other ranks before the group counts as lost (default 1,800: rank 0 may
evaluate for minutes while the others wait)."""


class GroupLost(HpsearchError):
    """A rank of the trial's process group is gone (killed, crashed, unreachable): the trial cannot go on."""


class Stopped(Exception):
    """Raised on ranks other than 0 when rank 0 stops the trial (pruned, stopped early, failed)."""


@dataclass(frozen=True)
class Group:
    """This process's place in a trial's process group."""

    rank: int
    """0 talks to the study; the others follow it."""
    world: int
    """How many processes (devices) train each trial."""
    local_rank: int
    """Which of this machine's visible devices is this process's (cuda:LOCAL_RANK on GPUs)."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _tensor_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if _backend() == "nccl" else torch.device("cpu")

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        _collective(torch.distributed.broadcast_object_list, box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank must call it at the same point)."""
        t = torch.tensor([1 if flag else 0], device=self._tensor_device())
        _collective(torch.distributed.all_reduce, t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def wrap(self, model: torch.nn.Module, device: torch.device, mode: str = "ddp") -> torch.nn.Module:
        """What the training passes run. ``ddp``: ``model`` in DistributedDataParallel (gradients averaged over
        the ranks), its own attributes still reachable (a task may call ``prepare_decoder_input_ids_from_labels``).
        ``fsdp``: ``model`` itself, its blocks and then the whole sharded in place (FSDP2's ``fully_shard``;
        gradients averaged the same way); build the optimizer after this."""
        if mode == "fsdp":
            return shard(model)
        if mode != "ddp":
            raise ValueError(f"mode must be ddp or fsdp, got {mode!r}")
        return _DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    @staticmethod
    def no_sync(trainer: torch.nn.Module) -> Any:
        """A context in which backward passes accumulate gradients without reducing them (DDP's ``no_sync``;
        FSDP reduces every micro-batch: nothing to skip safely)."""
        return trainer.no_sync() if isinstance(trainer, torch.nn.parallel.DistributedDataParallel) else nullcontext()

    def close(self) -> None:
        """Leave the group together (a rank that exits while gloo's threads still talk to it aborts)."""
        if torch.distributed.is_initialized():
            try:
                torch.distributed.barrier()
            except (RuntimeError, torch.distributed.DistError):
                pass  # a peer is gone already: nothing to wait for
            torch.distributed.destroy_process_group()


class _DDP(torch.nn.parallel.DistributedDataParallel):
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` over the process group with FSDP2: each block the model names as not to be split
    (transformers' ``_no_split_modules``: a transformer layer), then the root."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft keeps the names there
    blocks = set(getattr(base, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def _backend() -> str:
    return torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"


def _collective(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, torch.distributed.DistError) as exc:
        raise GroupLost(f"a rank of the trial's process group is gone ({str(exc).splitlines()[0][:200]})") from exc


def is_group_error(exc: BaseException) -> bool:
    """Whether an error that escaped training is the group's (a peer gone in DDP's own all-reduce), not the
    config's."""
    if isinstance(exc, GroupLost):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, torch.distributed.DistError)) and any(
        m in text for m in ("Connection closed", "Connection reset", "gloo", "NCCL", "Broken pipe", "timed out",
                            "ProcessGroup"))


def world_size() -> int:
    """WORLD_SIZE of this process's environment (1: not part of a group)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise HpsearchError(f"WORLD_SIZE={raw!r}: must be an integer") from None


def join(device: torch.device) -> Group | None:
    """Join the process group the environment describes (None when WORLD_SIZE is 1 or unset); on a GPU this
    process's device is cuda:LOCAL_RANK."""
    world = world_size()
    if world <= 1:
        return None
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        timeout = dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank,
                                             world_size=world, timeout=timeout)
    return Group(rank=rank, world=world, local_rank=local)


def rank_device(device: torch.device) -> torch.device:
    """In a group on GPUs, this rank's GPU (cuda:LOCAL_RANK); elsewhere ``device`` itself."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device

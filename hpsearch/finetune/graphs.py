"""The training step as a CUDA graph (``model.cuda_graphs: true``): captured once per batch shape, then replayed,
so that a step of a launch-bound model costs a few launches instead of ~300.

What a step does is one function, :meth:`StepGraphs.body` (zero the gradients, forward and backward over the
micro-batches, add the loss to the device's running sum, clip, AdamW): eager, it is the same arithmetic as the
loop's own step; on a GPU, the second time a batch shape comes it is captured with static input buffers and from
then on replayed after copying the batch in (three or four copies and the replay: the launches of a step). The
optimizer is fused AdamW with ``capturable=True`` and the learning rate a device tensor (the schedule fills it in
place between replays), the gradients are zeroed in place rather than freed (the graph reads fixed addresses), and
autocast runs without its weight cache (which capture forbids). On the CPU there is nothing to capture: the same
code runs without capture, which is what the CPU tests check against the eager step.

A shape is the rows and padded width of each micro-batch (:func:`hpsearch.finetune.batching.bucket_widths`
keeps them few); each graph shares one memory pool. Memory that runs out turns graphs off for the rest of the trial,
said on the trial (``cuda_graphs``), and the step runs eagerly. A capture that fails turns them off for the rest of
the process (:data:`BROKEN`, said once): torch's ``graph.__exit__`` leaves the thread on the capture stream when
``capture_end`` raises, so :meth:`StepGraphs.record` ends a capture itself, always putting the thread back on its
stream and resetting the graph, and no later trial captures in a process whose CUDA state a failure may have left
behind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

BROKEN: str | None = None
"""Why graphs are off for the rest of this process: a capture failed (None: no capture has)."""
WARMUP = 1
"""Eager runs of a shape before it is captured: the first builds AdamW's state, the gradients and cuBLAS's
workspaces, which the graph then reads at fixed addresses."""


@dataclass
class _Graph:
    """One captured step: the graph, its static inputs (each pass's batch and labels) and its static loss."""

    graph: Any
    inputs: list[tuple[dict[str, torch.Tensor], torch.Tensor]]
    loss: torch.Tensor


@dataclass
class StepGraphs:
    """A trial's training step, eager or replayed from a graph per shape."""

    passes: Callable[[Any], list[tuple[dict[str, torch.Tensor], torch.Tensor, float]]]
    """The batch's passes: each micro-batch's model inputs, labels and loss weight."""
    forward_loss: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    """A pass's mean loss (the task's forward under autocast, and its loss)."""
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    max_grad_norm: float
    loss_total: torch.Tensor
    """The running sum of the training losses on the device (read at each report)."""
    capture: bool
    """Whether shapes are captured (a CUDA device) or every step runs eagerly (the CPU: the same code)."""
    seen: dict[tuple, int] = field(default_factory=dict)
    graphs: dict[tuple, _Graph] = field(default_factory=dict)
    off: str | None = None
    """Why graphs were turned off for the rest of the trial (None: on)."""
    pool: Any = None

    def __post_init__(self) -> None:
        if self.capture and BROKEN is not None:
            self.off = BROKEN

    def step(self, batch: Any) -> torch.Tensor:
        """One optimizer step on ``batch``; return its loss (a device tensor)."""
        passes = self.passes(batch)
        key = tuple((tuple(x.shape for x in inputs.values()), tuple(labels.shape)) for inputs, labels, _ in passes)
        graph = self.graphs.get(key)
        if graph is not None:
            for (inputs, labels, _), (static, static_labels) in zip(passes, graph.inputs):
                for name, value in inputs.items():
                    static[name].copy_(value)
                static_labels.copy_(labels)
            graph.graph.replay()
            return graph.loss
        self.seen[key] = self.seen.get(key, 0) + 1
        if not self.capture or self.off is not None or self.seen[key] <= WARMUP or len(passes) > 1:
            return self.body(passes)
        return self._capture(key, passes)

    def body(self, passes: list[tuple[dict[str, torch.Tensor], torch.Tensor, float]]) -> torch.Tensor:
        """What a step does, captured or not: zero the gradients in place, forward and backward over the passes
        (each loss weighted by its pass's share), add the loss to the running sum, clip, step AdamW."""
        self.optimizer.zero_grad(set_to_none=False)
        total = None
        for inputs, labels, weight in passes:
            loss = self.forward_loss(inputs, labels) * weight
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        self.loss_total.add_(total)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return total

    def _capture(self, key: tuple, passes: list) -> torch.Tensor:
        """Capture the step for ``key``'s shape with static copies of this batch, then replay it (the capture itself
        computes nothing); a failure turns graphs off and runs the step eagerly."""
        static = [({name: value.clone() for name, value in inputs.items()}, labels.clone(), weight)
                  for inputs, labels, weight in passes]
        try:
            graph, loss = self.record(lambda: self.body(static))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the step runs eagerly, and no capture again
            self.off = _broken(f"off: the capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            torch.cuda.synchronize()
            return self.body(passes)
        self.graphs[key] = _Graph(graph, [(inputs, labels) for inputs, labels, _ in static], loss)
        graph.replay()
        return loss

    def record(self, step: Callable[[], torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Capture ``step`` as a CUDA graph (in the graphs' shared memory pool); return the graph and the tensor
        its replays write the loss to."""
        graph = torch.cuda.CUDAGraph()
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        torch.cuda.synchronize()
        capture = torch.cuda.graph(graph, pool=self.pool)
        capture.__enter__()  # the capture stream, capture_begin
        try:
            loss = step()
        except BaseException:
            _end(graph, capture, failed=True)
            raise
        _end(graph, capture, failed=False)
        return graph, loss

    def describe(self) -> str:
        """What a trial records (``cuda_graphs``): on and how many shapes were captured, or why it is off."""
        if not self.capture:
            return "off: not a CUDA device (the same step, uncaptured)"
        return self.off or f"on: {len(self.graphs)} shape(s) captured"


def _end(graph: Any, capture: Any, failed: bool) -> None:
    """End a capture: ``capture_end``, then, whatever it raises, the thread back on its own stream (what torch's
    ``graph.__exit__`` skips when ``capture_end`` raises) and a failed graph reset. An error of ``capture_end`` is
    raised unless the capture had failed already (then the first error is the one that says why)."""
    try:
        graph.capture_end()
    except Exception:
        _reset(graph)
        if not failed:
            raise
    finally:
        capture.stream_ctx.__exit__(None, None, None)
    if failed:
        _reset(graph)


def _reset(graph: Any) -> None:
    try:
        graph.reset()
    except Exception:  # noqa: BLE001 - a graph that was never whole has nothing to free
        pass


def _broken(reason: str) -> str:
    """Turn graphs off for the rest of the process, saying so once; return ``reason``."""
    import sys

    global BROKEN
    if BROKEN is None:
        BROKEN = reason
        print(f"[hpsearch] CUDA graphs {reason}; off for the rest of this process (each trial then steps eagerly)",
              file=sys.stderr, flush=True)
    return reason

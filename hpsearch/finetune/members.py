"""The executor of fused trials: the model once more, whose trained parameters are read from the members at each pass.

A pass runs K members' batches as one batch of ``K * rows`` rows, member-major (member k's rows are ``k * rows``
to ``(k + 1) * rows``; a member with fewer rows is padded with copies of its first). Every module of the executor
that holds parameters is swapped for a member-aware one, which does what the plain module would, on each member's
rows with that member's parameters:

- a linear layer (``nn.Linear``, GPT-2's ``Conv1D``) whose weight members own: one batched product over their
  stacked weights; whose weight is the shared base: one product over every row, plus, for the members that put a
  LoRA adapter on it, one batched product of their adapters (ranks padded with zeros to the largest, each member's
  ``alpha / r`` and adapter dropout its own);
- an embedding members own: each member's rows looked up in its own table (tables may differ in size, as each
  member's shrunk vocabulary does);
- a layer norm: normalized once, each member's scale and shift applied to its rows;
- any other module with parameters that members own (RMS norms): each row sees its member's parameter broadcast.

Member-owned parameters are the ones a member trains or may train: every parameter of a fully fine-tuned member,
the adapters and the task head (peft's ``modules_to_save``) of a LoRA member, whose base it shares with the
executor. What the plain module would compute is computed per member exactly, so that a member trains as it would
alone (to floating-point rounding: products batched differently).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

PEFT_PREFIX = "base_model.model."
"""Where peft puts the wrapped model among a LoRA model's parameter names."""
SAVED = ".modules_to_save.default"
"""peft's path to the trained copy of a module it trains in full (the task head)."""


@dataclass
class Adapter:
    """One member's LoRA adapter on one linear layer."""

    A: torch.Tensor
    """``lora_A``'s weight, [r, in]."""
    B: torch.Tensor
    """``lora_B``'s weight, [out, r]."""
    scaling: float
    """``alpha / r``."""
    dropout: float
    """Dropout on the adapter's input."""


@dataclass
class MemberView:
    """What the executor reads of one member: its own parameters by the executor's names, and its adapters by the
    executor's module paths."""

    own: dict[str, torch.Tensor]
    adapters: dict[str, Adapter] = field(default_factory=dict)
    padding: dict[str, int | None] = field(default_factory=dict)
    """Each embedding's padding index, by module path (a shrunk vocabulary's differs from the full table's)."""
    lora: bool = False
    """Whether the member is a LoRA model (its base is the shared one); else it owns every parameter."""


def view_of(model: torch.nn.Module, shared: set[int] = frozenset()) -> MemberView:
    """The member's parameters and adapters, named as the executor names them (peft's wrapping taken off). A LoRA
    member owns its adapters, its trained head and any other parameter that is not the shared base's (``shared``:
    the base's storages), such as a frozen head the checkpoint lacked, initialized under the member's seed."""
    from .lora import is_peft

    padding = {name.removeprefix(PEFT_PREFIX): m.padding_idx for name, m in model.named_modules()
               if isinstance(m, torch.nn.Embedding)}
    if not is_peft(model):  # tied weights under each name (an output layer tied to the input embedding)
        return MemberView(own=dict(model.named_parameters(remove_duplicate=False)), padding=padding)
    from peft.tuners.lora import LoraLayer

    adapters: dict[str, Adapter] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            dropout = module.lora_dropout["default"]
            adapters[name.removeprefix(PEFT_PREFIX)] = Adapter(
                module.lora_A["default"].weight, module.lora_B["default"].weight, float(module.scaling["default"]),
                float(getattr(dropout, "p", 0.0)))
        elif isinstance(module, LoraLayer) and getattr(module, "lora_embedding_A", None):
            raise ValueError(f"{name}: LoRA on an embedding is not fused")
    own = {name.removeprefix(PEFT_PREFIX).replace(SAVED, "").replace(".base_layer", ""): p
           for name, p in model.named_parameters()
           if SAVED in name or not ("lora_" in name or ".original_module." in name
                                    or p.untyped_storage().data_ptr() in shared)}
    return MemberView(own=own, adapters=adapters, padding=padding, lora=True)


class PassState:
    """The pass being run: its members (in row order), rows per member, their hidden dropouts, and the stacks made
    for it."""

    def __init__(self) -> None:
        self.members: list[MemberView] = []
        self.rows = 0
        self.dropouts: list[float] = []
        """Each member's hidden dropout, in row order (:mod:`hpsearch.finetune.fused_dropout` applies them)."""
        self.only: int | None = None
        """The member whose parameters a computation not made per row reads now (T5's position bias)."""
        self.batched = True
        """Whether members' own weights are stacked into batched products (one launch for all: a launch-bound
        pass) or each member's rows go through its own weights (no copy of the weights: an arithmetic-bound one)."""
        self._stacks: dict[Any, torch.Tensor] = {}
        self._constants: dict[Any, torch.Tensor] = {}
        self._stale = False

    def forget(self) -> None:
        """Members joined or left: the per-member constants are made again for the passes to come."""
        self._stale = True

    def constant(self, values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``values`` (one per member: an adapter's ``alpha / r``, a dropout's keep probability) as a [K] tensor on
        ``device``, made once for the members there are (a host-to-device copy and a sync on a GPU: never once a
        pass); forgotten when members join or leave (:meth:`forget`)."""
        key = (values, dtype, device)
        made = self._constants.get(key)
        if made is None:
            made = self._constants[key] = torch.tensor(values, dtype=dtype).to(device)
        return made

    def begin(self, members: list[MemberView], rows: int, dropouts: list[float] | None = None,
              batched: bool = True) -> None:
        if self._stale:
            self._constants, self._stale = {}, False
        self.members, self.rows, self._stacks, self.batched = members, rows, {}, batched
        self.dropouts = list(dropouts) if dropouts is not None else [0.0] * len(members)

    def end(self) -> None:
        self.members, self.dropouts, self._stacks = [], [], {}

    def runs(self) -> list[tuple[int, int, float]]:
        """The pass's rows as runs of members with one dropout: (first row, row after the last, dropout)."""
        out: list[tuple[int, int, float]] = []
        for k, p in enumerate(self.dropouts):
            if out and out[-1][2] == p:
                out[-1] = (out[-1][0], (k + 1) * self.rows, p)
            else:
                out.append((k * self.rows, (k + 1) * self.rows, p))
        return out

    @property
    def k(self) -> int:
        return len(self.members)

    def owned(self, name: str) -> list[torch.Tensor] | None:
        """Each member's own ``name`` (by the executor's parameter name), or None when members do not own it."""
        if not self.members or name not in self.members[0].own:
            return None
        return [m.own[name] for m in self.members]

    def stacked(self, name: str) -> torch.Tensor:
        """The members' own ``name`` stacked, [K, ...]: made once per pass (a tied weight is one stack)."""
        tensors = self.owned(name)
        key = tuple(id(t) for t in tensors)
        if key not in self._stacks:
            self._stacks[key] = torch.stack(tensors)
        return self._stacks[key]

    def adapters(self, path: str) -> list[Adapter | None] | None:
        """Each member's adapter on the linear layer ``path`` (None for a member without one), or None when no
        member has one."""
        found = [m.adapters.get(path) for m in self.members]
        return found if any(a is not None for a in found) else None


class _Stands(torch.nn.Module):
    """A member-aware stand-in for the executor's module ``base`` at path ``name``, reading the pass from ``state``:
    what else the model's code reads of it (``weight``, ``padding_idx`` ...: T5 reads ``wo.weight.dtype``) is read
    from ``base``."""

    def __init__(self, base: torch.nn.Module, name: str, state: PassState) -> None:
        super().__init__()
        self.base, self.name, self.state = base, name, state

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(super().__getattr__("base"), name)


def _per_member(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x``'s rows as [K, rows * ..., features]."""
    return x.reshape(k, -1, x.shape[-1])


class MemberLinear(_Stands):
    """A linear layer (``nn.Linear`` or GPT-2's ``Conv1D``, whose weight is [in, out]) of the executor."""

    def __init__(self, base: torch.nn.Module, name: str, state: PassState) -> None:
        super().__init__(base, name, state)
        self.transposed = not isinstance(base, torch.nn.Linear)  # Conv1D
        self._zeros: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        weights = state.owned(f"{self.name}.weight")
        if weights is None:
            out = self.base(x)
        else:
            out = self._owned(x)
        adapters = state.adapters(self.name)
        if adapters is not None:
            out = out + self._lora(x, adapters).to(out.dtype).view(out.shape)
        return out

    def _owned(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if not state.batched:  # each member's rows through its own weights: no stacked copy of them
            weights, biases = state.owned(f"{self.name}.weight"), state.owned(f"{self.name}.bias")
            outs = []
            for k, (part, w) in enumerate(zip(x.split(state.rows), weights)):
                b = None if biases is None else biases[k]
                if self.transposed:  # GPT-2's Conv1D keeps its weight as [in, out]
                    outs.append(part @ w if b is None else part @ w + b)
                else:
                    outs.append(F.linear(part, w, b))
            return torch.cat(outs)
        bias = state.owned(f"{self.name}.bias")
        out = _MemberProduct.apply(_per_member(x, state.k), state.stacked(f"{self.name}.weight"),
                                   None if bias is None else state.stacked(f"{self.name}.bias"), self.transposed)
        return out.view(*x.shape[:-1], out.shape[-1])

    def _lora(self, x: torch.Tensor, adapters: list[Adapter | None]) -> torch.Tensor:
        """Each member's ``B(A(dropout(x))) * alpha / r`` on its rows (zero for a member without an adapter)."""
        real = [a for a in adapters if a is not None]
        dtype, device = real[0].A.dtype, real[0].A.device
        r = max(a.A.shape[0] for a in real)
        n_in, n_out = real[0].A.shape[1], real[0].B.shape[0]
        zero_a, zero_b = self._zero((r, n_in), dtype, device), self._zero((n_out, r), dtype, device)
        a_stack = torch.stack([zero_a if a is None else _pad_rows(a.A, r) for a in adapters])  # [K, r, in]
        b_stack = torch.stack([zero_b if a is None else _pad_cols(a.B, r) for a in adapters])  # [K, out, r]
        xs = _per_member(x.to(dtype), len(adapters))
        xs = _member_dropout(xs, tuple(0.0 if a is None else a.dropout for a in adapters), self.training,
                             self.state)
        scaling = tuple(0.0 if a is None else a.scaling for a in adapters)
        h = torch.bmm(torch.bmm(xs, a_stack.transpose(1, 2)), b_stack.transpose(1, 2))
        if len(set(scaling)) == 1:
            return h * scaling[0]
        return h * self.state.constant(scaling, h.dtype, h.device).view(-1, 1, 1)

    def _zero(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (shape, dtype, device)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(shape, dtype=dtype, device=device)
        return self._zeros[key]


class _MemberProduct(torch.autograd.Function):
    """Each member's rows times its own weight in one batched product (``xs`` [K, rows, in]; ``w`` [K, out, in],
    or [K, in, out] for GPT-2's Conv1D), under the autocast dtype as a linear layer would be. The weights' gradient
    is computed in their own layout: autograd copies any gradient whose strides differ from its parameter's, and
    ``bmm``'s own backward hands a stacked weight a transposed one (a copy per weight per member per pass: 14 of
    the tiny BERT's 121 kernels a step, per member)."""

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                transposed: bool) -> torch.Tensor:
        kind = xs.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        ctx.dtypes, ctx.transposed = (xs.dtype, w.dtype, None if b is None else b.dtype), transposed
        with torch.autocast(kind, enabled=False):
            xc, wc = (xs, w) if dtype is None else (xs.to(dtype), w.to(dtype))
            ctx.save_for_backward(xc, wc)
            mat = wc if transposed else wc.transpose(1, 2)
            return torch.bmm(xc, mat) if b is None else torch.baddbmm(b.to(xc.dtype).unsqueeze(1), xc, mat)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xc, wc = ctx.saved_tensors
        g = g.to(xc.dtype)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        if ctx.transposed:  # out = x @ w, w [in, out]
            gx, gw = torch.bmm(g, wc.transpose(1, 2)), torch.bmm(xc.transpose(1, 2), g)
        else:  # out = x @ w.T, w [out, in]
            gx, gw = torch.bmm(g, wc), torch.bmm(g.transpose(1, 2), xc)
        gb = None if b_dtype is None else g.sum(1).to(b_dtype)
        return gx.to(x_dtype), gw.to(w_dtype), gb, None


def _pad_rows(t: torch.Tensor, r: int) -> torch.Tensor:
    return t if t.shape[0] == r else F.pad(t, (0, 0, 0, r - t.shape[0]))


def _pad_cols(t: torch.Tensor, r: int) -> torch.Tensor:
    return t if t.shape[1] == r else F.pad(t, (0, r - t.shape[1]))


def _member_dropout(xs: torch.Tensor, p: tuple[float, ...], training: bool, state: PassState) -> torch.Tensor:
    """Dropout on [K, ..., in] with member k's probability ``p[k]``."""
    if not training or not any(p):
        return xs
    if len(set(p)) == 1:
        return F.dropout(xs, p[0], True)
    keep = state.constant(tuple(1.0 - v for v in p), xs.dtype, xs.device).view(-1, 1, 1)
    return xs * (torch.rand_like(xs) < keep) / keep


class MemberEmbedding(_Stands):
    """An embedding of the executor: each member's rows looked up in its own table when members own it."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        state = self.state
        tables = state.owned(f"{self.name}.weight")
        if tables is None:
            return self.base(ids)
        b = self.base
        pads = [m.padding.get(self.name, b.padding_idx) for m in state.members]
        look = lambda part, table, pad: F.embedding(part, table, pad, b.max_norm, b.norm_type,  # noqa: E731
                                                    b.scale_grad_by_freq, b.sparse)
        if ids.shape[0] == state.k * state.rows:  # batch-major: each member's rows
            return torch.cat([look(part, table, pad) for part, table, pad in zip(ids.split(state.rows), tables, pads)])
        if ids.shape[0] == 1:  # one row for the whole batch (a position table): each member's, over its rows
            return torch.cat([look(ids, table, pad).expand(state.rows, *ids.shape[1:], -1)
                              for table, pad in zip(tables, pads)])
        if state.only is not None:  # a computation made for one member at a time (:func:`_per_member_bias`)
            return look(ids, tables[state.only], pads[state.only])
        raise RuntimeError(f"{self.name}: an embedding whose input is not one row per example is not fused")


class MemberLayerNorm(_Stands):
    """A layer norm of the executor: normalized once, each member's scale and shift on its rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.owned(f"{self.name}.weight") is None and state.owned(f"{self.name}.bias") is None:
            return self.base(x)
        b = self.base
        y = F.layer_norm(x, b.normalized_shape, None, None, b.eps)
        ys = _per_member(y, state.k)
        if b.weight is not None:
            ys = ys * state.stacked(f"{self.name}.weight").unsqueeze(1)
        if b.bias is not None:
            ys = ys + state.stacked(f"{self.name}.bias").unsqueeze(1)
        return ys.view(x.shape)


class MemberBroadcast(_Stands):
    """Any other module with parameters of its own (an RMS norm): run once, each row seeing its member's parameters
    broadcast over it (its forward must combine them elementwise with a [rows, ..., features] input)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        names = [n for n, _ in self.base.named_parameters(recurse=False)]
        if not names or state.owned(f"{self.name}.{names[0]}") is None:
            return self.base(x, *args, **kwargs)
        saved = {n: self.base._parameters[n] for n in names}
        try:
            for n in names:
                stack = state.stacked(f"{self.name}.{n}")  # [K, *shape]
                rows = stack.repeat_interleave(state.rows, 0)
                self.base._parameters[n] = rows.view(rows.shape[0], *([1] * (x.ndim - 1 - (stack.ndim - 1))),
                                                     *stack.shape[1:])
            return self.base(x, *args, **kwargs)
        finally:
            self.base._parameters.update(saved)


class MemberCall(_Stands):
    """Any other module with parameters members own (an embedding that adds to the lookup, as BART's learned
    positions and scaled word embeddings do): called once per member, on that member's rows (every argument whose
    first dimension is the pass's rows is cut) with that member's parameters; an output of one row (positions
    shared by the batch) stands for each of the member's rows."""

    def __init__(self, base: torch.nn.Module, name: str, state: PassState) -> None:
        super().__init__(base, name, state)
        self.names = [n for n, _ in base.named_parameters()]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        owned = {n: state.owned(f"{self.name}.{n}") for n in self.names}
        owned = {n: v for n, v in owned.items() if v is not None}
        if not owned:
            return self.base(*args, **kwargs)
        total, rows = state.k * state.rows, state.rows
        batched = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t) and t.ndim and t.shape[0] == total]
        if not batched:
            raise RuntimeError(f"{self.name} ({type(self.base).__name__}): a module whose input is not one row per "
                               f"example is not fused")
        outs = []
        for k in range(state.k):
            cut = lambda t: t[k * rows:(k + 1) * rows] if torch.is_tensor(t) and t.ndim and t.shape[0] == total \
                else t  # noqa: E731
            out = torch.func.functional_call(self.base, {n: v[k] for n, v in owned.items()},
                                             tuple(cut(a) for a in args), {n: cut(v) for n, v in kwargs.items()})
            outs.append(out.expand(rows, *out.shape[1:]) if out.shape[0] == 1 else out)  # one row for all: each
        return torch.cat(outs)


def _per_member_bias(module: torch.nn.Module, state: PassState) -> None:
    """T5's relative position bias (``compute_bias``: one [1, heads, q, k] bias for the batch, from a table the
    members own): computed for each member with its table, each over its rows."""
    original = module.compute_bias

    def compute_bias(*args: Any, **kwargs: Any) -> torch.Tensor:
        if state.owned(f"{module.hpsearch_path}.relative_attention_bias.weight") is None:
            return original(*args, **kwargs)
        biases = []
        for k in range(state.k):
            state.only = k
            try:
                biases.append(original(*args, **kwargs))
            finally:
                state.only = None
        return torch.cat(biases).repeat_interleave(state.rows, 0)

    module.compute_bias = compute_bias


def member_aware(executor: torch.nn.Module, state: PassState) -> None:
    """Swap every module of ``executor`` that holds parameters for its member-aware form."""
    from transformers.pytorch_utils import Conv1D

    for path, module in list(executor.named_modules()):
        if callable(getattr(module, "compute_bias", None)) and hasattr(module, "relative_attention_bias"):
            module.hpsearch_path = path
            _per_member_bias(module, state)
        if not path or not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            swapped: torch.nn.Module = MemberLinear(module, path, state)
        elif type(module) is torch.nn.Embedding:
            swapped = MemberEmbedding(module, path, state)
        elif isinstance(module, torch.nn.LayerNorm):
            swapped = MemberLayerNorm(module, path, state)
        elif all(p.ndim == 1 for p in module.parameters(recurse=False)) and "norm" in type(module).__name__.lower():
            swapped = MemberBroadcast(module, path, state)
        else:
            swapped = MemberCall(module, path, state)
        parent, _, child = path.rpartition(".")
        setattr(executor.get_submodule(parent) if parent else executor, child, swapped)

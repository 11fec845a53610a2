"""How a module's methods become pure functions of ``(inner, meta, *data)``.

A module is evaluated functionally on a *structural copy* (a "snapshot"): new module objects
with their own parameter, buffer and child dictionaries, sharing everything else. The autograd
graph of a solution keeps only the snapshot alive, never the module that holds the solution,
so no reference cycle runs through the graph and a module is freed as soon as the user drops it.
Tensors are substituted with ``torch.func.functional_call``; buffers are cloned on every call,
so in-place updates (BatchNorm's running statistics) touch throwaway copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from .state import MetaParameters


def _copy_structure(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """A new module object of the same class with its own parameter, buffer and child dicts
    (children copied the same way); all other attributes are shared."""
    if id(module) in memo:
        return memo[id(module)]
    clone: nn.Module = object.__new__(type(module))
    memo[id(module)] = clone
    state = {k: v for k, v in module.__dict__.items() if not k.startswith("_fi_")}
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {
        k: None if m is None else _copy_structure(m, memo) for k, m in module._modules.items()
    }
    meta = state.get("_meta")
    if isinstance(meta, MetaParameters):
        state["_meta"] = _copy_structure(meta, memo)
    clone.__dict__.update(state)
    return clone


class _Bound(nn.Module):
    """``functional_call`` target: the module as ``inner``, its meta-parameters as ``meta``;
    calling it runs ``method(module, *data, **kwargs)``."""

    def __init__(self, module: nn.Module, meta: MetaParameters) -> None:
        super().__init__()
        self.inner = module
        self.meta = meta

    def forward(
        self, method: Callable[..., Any], data: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return method(self.inner, *data, **kwargs)


def call_with_detached_meta(
    module: nn.Module,
    meta: MetaParameters,
    method: Callable[..., Any],
    data: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``method(module, *data, **kwargs)`` with every meta-parameter detached (the user's
    inner loop must not build a graph into the meta-parameters or touch their ``.grad``)."""
    swapped = {"meta." + k: v.detach() for k, v in meta.named_parameters()}
    return torch.func.functional_call(
        _Bound(module, meta), swapped, args=(method, data, kwargs), strict=False
    )


class Snapshot:
    """A module's structure frozen at one moment, evaluated as pure functions.

    Holds no tensor that carries the module's solution, and no reference to the module
    itself: the graph of a solution may keep it alive without keeping the module alive.
    """

    def __init__(self, module: nn.Module) -> None:
        copy = _copy_structure(module, {})
        meta = copy.__dict__["_meta"]
        self.bound = _Bound(copy, meta)
        self.cls = type(module)
        # Inner parameters that do not require grad are frozen: constants, like buffers.
        params = list(copy.named_parameters())
        self.inner = {n: p for n, p in params if p.requires_grad}
        self.inner_names = list(self.inner)
        self.frozen = {"inner." + n: p for n, p in params if not p.requires_grad}

    def named_inner(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.inner.items())

    def named_meta(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.bound.meta.named_parameters()

    def buffers(self) -> dict[str, torch.Tensor]:
        """Detached copies of every buffer (inner and meta) and frozen inner parameter, by
        ``functional_call`` name: the constants of the optimality condition."""
        constants = {n: b.detach().clone() for n, b in self.bound.named_buffers()}
        constants.update({n: p.detach().clone() for n, p in self.frozen.items()})
        return constants

    def call(
        self,
        name: str,
        inner: dict[str, Any],
        meta: dict[str, Any],
        buffers: dict[str, torch.Tensor],
        data: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The class's method ``name`` run with the given tensors substituted."""
        tensors = {"inner." + k: v for k, v in inner.items()}
        tensors.update({"meta." + k: v for k, v in meta.items()})
        # Fresh copies per call: BatchNorm updates its running statistics in place.
        tensors.update({k: b.clone() for k, b in buffers.items()})
        method = getattr(self.cls, name)
        return torch.func.functional_call(
            self.bound, tensors, args=(method, data, kwargs), strict=False
        )

    def objective(
        self,
        inner: dict[str, Any],
        meta: dict[str, Any],
        buffers: dict[str, torch.Tensor],
        data: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        value = self.call("objective", inner, meta, buffers, data, kwargs)
        if not (isinstance(value, torch.Tensor) and value.dim() == 0):
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(
                f"{self.cls.__name__}.objective(*data): expected a scalar (0-d) tensor; "
                f"received {got}. Reduce it, e.g. with .sum() or .mean()."
            )
        return value

    def optimality(
        self,
        inner: dict[str, Any],
        meta: dict[str, Any],
        buffers: dict[str, torch.Tensor],
        data: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        """The user's ``optimality``, as a dict keyed like the inner parameters."""
        out = self.call("optimality", inner, meta, buffers, data, kwargs)
        return as_named(out, self.inner_names, f"{self.cls.__name__}.optimality(*data)")


def as_named(out: Any, names: list[str], call: str) -> dict[str, Any]:
    """A tuple in ``parameters()`` order (TorchOpt's convention) or a dict, as a dict."""
    if isinstance(out, dict):
        if sorted(out) != sorted(names):
            raise ValueError(
                f"{call}: expected a dict keyed by the inner parameter names {names}; "
                f"received keys {list(out)}."
            )
        return out
    if isinstance(out, torch.Tensor):
        out = (out,)
    if not isinstance(out, tuple | list) or len(out) != len(names):
        got = f"{len(out)} items" if isinstance(out, tuple | list) else type(out).__name__
        raise ValueError(
            f"{call}: expected one tensor per inner parameter, in parameters() order "
            f"({len(names)}: {names}), or a dict keyed by those names; received {got}."
        )
    return dict(zip(names, out, strict=True))


class DerivedOptimality:
    """``T(inner, meta, buffers, data, kwargs) = grad_inner objective``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __call__(
        self,
        inner: dict[str, Any],
        meta: dict[str, Any],
        buffers: dict[str, torch.Tensor],
        data: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        return torch.func.grad(self.snapshot.objective)(inner, meta, buffers, data, kwargs)


class UserOptimality:
    """``T`` is the class's own ``optimality`` method."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __call__(
        self,
        inner: dict[str, Any],
        meta: dict[str, Any],
        buffers: dict[str, torch.Tensor],
        data: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        return self.snapshot.optimality(inner, meta, buffers, data, kwargs)


class _Pure:
    """One of a module's methods as ``fn(inner, meta, *data, **kwargs)``."""

    def __init__(
        self, snapshot: Snapshot, buffers: dict[str, torch.Tensor], kind: str, rule: Any = None
    ) -> None:
        self.snapshot, self.buffers, self.kind, self.rule = snapshot, buffers, kind, rule

    def __call__(
        self, inner: dict[str, Any], meta: dict[str, Any], *data: Any, **kwargs: Any
    ) -> Any:
        if self.kind == "objective":
            return self.snapshot.objective(inner, meta, self.buffers, data, kwargs)
        if self.kind == "optimality":
            return self.rule(inner, meta, self.buffers, data, kwargs)
        return self.snapshot.call("forward", inner, meta, self.buffers, data, kwargs)

    def __repr__(self) -> str:
        return f"<{self.kind} of {self.snapshot.cls.__name__}, as fn(inner, meta, *data)>"


class Functional(NamedTuple):
    """A module as pure functions and parameter dicts, from ``module.functional()``.

    Attributes:
        objective: ``objective(inner, meta, *data) -> scalar``; ``None`` if the class defines
            only ``optimality``.
        inner: the inner parameters, ``{name: tensor}`` (detached copies: a starting point).
        meta: the meta-parameters, ``{name: tensor}`` (the module's own tensors).
        optimality: ``optimality(inner, meta, *data) -> dict like inner``, zero at a
            solution (the gradient of the objective when the class defines only that).
        forward: ``forward(inner, meta, *args)``, the module's ``forward``.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> class Scale(fi.nn.ImplicitMetaGradientModule):
        ...     def __init__(self, a):
        ...         super().__init__()
        ...         self.a = a
        ...         self.x = torch.nn.Parameter(torch.zeros(()))
        ...
        ...     def forward(self, t):
        ...         return self.a * self.x * t
        ...
        ...     def objective(self, t):
        ...         return 0.5 * (self.x - t) ** 2
        ...
        ...     def solve(self, t):
        ...         pass
        >>> f = Scale(torch.tensor(2.0, requires_grad=True)).functional()
        >>> sorted(f.inner), sorted(f.meta)
        (['x'], ['a'])
        >>> x, a = torch.tensor(1.0), torch.tensor(3.0)
        >>> f.optimality({"x": x}, {"a": a}, torch.tensor(4.0))["x"]  # x - t
        tensor(-3.)
        >>> f.forward({"x": x}, {"a": a}, torch.tensor(2.0))  # a x t
        tensor(6.)
    """

    objective: Callable[..., torch.Tensor] | None
    inner: dict[str, torch.Tensor]
    meta: dict[str, torch.Tensor]
    optimality: Callable[..., dict[str, torch.Tensor]]
    forward: Callable[..., Any]


def functional(module: nn.Module, has_objective: bool, derived: bool) -> Functional:
    snapshot = Snapshot(module)
    buffers = snapshot.buffers()
    rule: Any = DerivedOptimality(snapshot) if derived else UserOptimality(snapshot)
    return Functional(
        objective=_Pure(snapshot, buffers, "objective") if has_objective else None,
        inner={n: p.detach().clone() for n, p in snapshot.named_inner()},
        meta=dict(snapshot.named_meta()),
        optimality=_Pure(snapshot, buffers, "optimality", rule),
        forward=_Pure(snapshot, buffers, "forward"),
    )

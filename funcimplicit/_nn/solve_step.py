"""The solve step of ``ImplicitMetaGradientModule``: run the user's inner loop, then attach.

The user's ``solve(*data)`` runs with the meta-parameters detached. Its fitted inner parameters
are then replaced, in every slot that holds them (tied ones included), by tensors carrying
implicit derivatives (``attach``, the rule behind ``implicit_root``) with respect to the
meta-parameters and the data; the optimality condition is evaluated on a structural snapshot
(see ``functional.py``). Before the next solve the fitted leaves are put back, so a warm start and
the user's optimizers keep working on the same ``nn.Parameter`` objects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from .._core.checks import floating_leaves
from .._linear.auto import Auto
from .._linear.base import LinearSolverBase
from .._rules.root import attach
from . import functional as _functional
from . import state

__all__ = ["implicit_solve", "install", "restore_leaves", "solve_implicitly"]

F = TypeVar("F", bound=Callable[..., Any])


def implicit_solve(raw: F) -> F:
    """Wrap a class's own ``solve`` so that its result carries implicit derivatives.

    A ``solve`` reached from inside another (``super().solve(...)`` in a subclass) runs as
    written: only the outermost call attaches derivatives.
    """

    @functools.wraps(raw)
    def solve(self: Any, *data: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("_fi_solving"):
            return raw(self, *data, **kwargs)
        return self._solve_implicitly(raw, data, kwargs)

    return solve  # type: ignore[return-value]


def solve_implicitly(
    module: nn.Module,
    meta: state.MetaParameters,
    raw: Callable[..., Any],
    data: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    derived: bool,
    solver: LinearSolverBase | None,
) -> Any:
    """Run ``raw(module, *data, **kwargs)`` (the class's own ``solve``) and attach derivatives.

    Args:
        module: the ``ImplicitMetaGradientModule`` being solved.
        meta: its meta-parameter registry.
        raw: the unwrapped ``solve`` method of the class.
        data: positional arguments of ``solve``.
        kwargs: keyword arguments of ``solve``.
        derived: whether the optimality is the gradient of ``objective`` (a symmetric Jacobian).
        solver: the linear solver of the derivative, ``None`` for ``Auto(symmetric=derived)``.

    Returns:
        What ``raw`` returned.
    """
    label = f"{type(module).__name__}.solve(*data)"
    restore_leaves(module)
    if not any(True for _ in module.parameters()):
        raise ValueError(f"{label}: the module has no inner parameters to solve for.")
    if not any(True for _ in meta.parameters()):
        raise ValueError(f"{label}: the module has no meta-parameters to differentiate.")
    module.__dict__["_fi_solving"] = True
    try:
        output = _functional.call_with_detached_meta(
            module, meta, raw, state.detached(data), state.detached(kwargs)
        )
    finally:
        del module.__dict__["_fi_solving"]

    snapshot = _functional.Snapshot(module)
    leaves = dict(snapshot.named_inner())
    if not leaves:
        raise ValueError(
            f"{label}: no inner parameter requires grad, so there is nothing to solve for."
        )
    solution = {name: p.detach().clone() for name, p in leaves.items()}
    floating_leaves(solution, label, "the inner parameters")
    named_meta = dict(snapshot.named_meta())
    rule: Any = (
        _functional.DerivedOptimality(snapshot) if derived else _functional.UserOptimality(snapshot)
    )
    if solver is None:
        solver = Auto(symmetric=derived)
    args = (named_meta, snapshot.buffers(), data, kwargs)
    out = attach(rule, solution, args, [0, 2, 3], solver, label)
    install(module, leaves, out)
    return output


def install(
    module: nn.Module, leaves: dict[str, torch.Tensor], solution: dict[str, torch.Tensor]
) -> None:
    """Put ``solution`` in every slot (tied ones included) that holds one of ``leaves``."""
    by_leaf = {id(leaves[name]): value for name, value in solution.items()}
    installed: dict[str, torch.Tensor] = {}
    for name, leaf in list(module.named_parameters(remove_duplicate=False)):
        if id(leaf) in by_leaf:
            owner, _, key = name.rpartition(".")
            state.put(module.get_submodule(owner)._parameters, key, by_leaf[id(leaf)])
            installed[name] = leaf
    module.__dict__["_fi_leaves"] = installed


def restore_leaves(module: nn.Module) -> None:
    """Put the fitted leaves back before another solve (warm start, same optimizers)."""
    for name, leaf in module.__dict__.pop("_fi_leaves", {}).items():
        owner, _, key = name.rpartition(".")
        try:
            submodule = module.get_submodule(owner)
        except AttributeError:
            continue
        current = submodule._parameters.get(key)
        if current is not None and not isinstance(current, nn.Parameter):
            state.put(submodule._parameters, key, leaf)

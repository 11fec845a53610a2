"""``root_vjp`` and ``root_jvp``: the implicit derivatives of a root as plain functions.

For ``T(theta*, args) = 0`` with ``A = dT/dtheta`` and ``B = dT/dargs`` at the solution:

    root_vjp:  u = A^{-T} v,  then  -B^T u        (one solve with A^T)
    root_jvp:  dtheta* = -A^{-1} (B dargs)         (one solve with A)

``A`` is applied through a JVP or VJP of ``T`` in ``theta`` and never formed; the solves go
through ``linear_solve``'s rule. The implicit rule of ``root.py`` shares the linear problems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import (
    check_same_layout,
)
from .._core.compat import physical
from .._core.tree import TensorTree, TreeT
from .._linear.adapter import as_linear_solver
from .._linear.base import LinearSolveArg, LinearSolverBase
from .linear import LinearProblem, solve_tree

__all__ = ["check_finite", "forward_solve", "root_jvp", "root_vjp", "transposed_solve"]


def _jacobian_matvec(fn: Callable[..., Any]) -> Callable[..., Any]:
    # s -> A s = d/de T(theta + e s, args) at e = 0
    def matvec(s: Any, theta: Any, *args: Any) -> Any:
        return _func.jvp(lambda th: fn(th, *args), (theta,), (s,))[1]

    return matvec


def _jacobian_t_matvec(fn: Callable[..., Any]) -> Callable[..., Any]:
    # u -> A^T u, the VJP of T in theta with cotangent u
    def matvec(u: Any, theta: Any, *args: Any) -> Any:
        return _func.vjp(lambda th: fn(th, *args), theta)[1](u)[0]

    return matvec


def _jacobian_linearize(fn: Callable[..., Any]) -> Callable[..., Callable[[Any], Any]]:
    # s -> A s, set up once per solve (see _func.linearize); always differentiable
    def linearize(theta: Any, *args: Any, differentiable: bool = True) -> Callable[[Any], Any]:
        return _func.linearize(lambda th: fn(th, *args), theta)

    return linearize


def _jacobian_t_linearize(fn: Callable[..., Any]) -> Callable[..., Callable[[Any], Any]]:
    # The VJP's forward pass (T at the solution) runs once per solve, not once per iteration.
    def linearize(theta: Any, *args: Any, differentiable: bool = True) -> Callable[[Any], Any]:
        return _func.pullback(lambda th: fn(th, *args), theta, differentiable=differentiable)

    return linearize


def transposed_solve(fn: Callable[..., Any], solve: LinearSolverBase, label: str) -> LinearProblem:
    return LinearProblem(
        _jacobian_t_matvec(fn),
        solve,
        f"{label} (the linear solve A^T u = v of the backward pass)",
        linearize=_jacobian_t_linearize(fn),
        adjoint=True,
    )


def forward_solve(fn: Callable[..., Any], solve: LinearSolverBase, label: str) -> LinearProblem:
    return LinearProblem(
        _jacobian_matvec(fn),
        solve,
        f"{label} (the linear solve A s = -dz of forward mode)",
        linearize=_jacobian_linearize(fn),
        adjoint=False,
    )


def check_finite(tree: TensorTree, message: str) -> None:
    """Raise ``ValueError(message)`` if ``tree`` holds NaN/Inf (eager only; no-op in compile)."""
    for leaf in _tree.flatten(tree)[0]:
        plain = physical(leaf)
        if plain is not None and not bool(torch.isfinite(plain).all()):
            raise ValueError(message)


def _split_tensors(args: Sequence[Any]) -> tuple[list[Any], Any, list[int]]:
    """Leaves of ``args``, their spec, and the positions of tensor leaves (one per position,
    even where one tensor object fills several)."""
    leaves, spec = _tree.flatten(tuple(args))
    return leaves, spec, [k for k, v in enumerate(leaves) if isinstance(v, torch.Tensor)]


def _with_values(
    leaves: list[Any], spec: Any, positions: Sequence[int], values: Sequence[Any]
) -> Any:
    local = list(leaves)
    for k, value in zip(positions, values, strict=True):
        local[k] = value
    return tuple(_tree.unflatten(spec, local))


def root_vjp(
    optimality_fn: Callable[..., TensorTree],
    solution: TreeT,
    args: Sequence[Any],
    cotangent: TreeT,
    *,
    solve: LinearSolveArg = None,
) -> tuple[Any, ...]:
    """Reverse-mode derivative of a root: ``v^T dtheta*/dargs`` for each argument.

    With ``A = dT/dtheta`` and ``B = dT/dargs`` at ``T(solution, *args) = 0``, solves
    ``A^T u = v`` and returns ``-B^T u``, split per argument: each position gets its own
    gradient, also where one tensor object is passed in several positions.

    Args:
        optimality_fn: ``T(theta, *args)``, a pytree shaped like ``theta``.
        solution: ``theta*`` with ``T(theta*, *args) = 0``.
        args: the arguments of ``T``; tensor leaves get gradients.
        cotangent: ``v``, shaped like ``solution``.
        solve: the linear solver for ``A^T u = v``; defaults to ``Auto()``: dense LU up to
            500 unknowns, GMRES beyond.

    Returns:
        One pytree per argument, shaped like it, with ``None`` at non-tensor leaves.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):  # root x* = a / 2
        ...     return 2 * x - a
        >>> a = torch.tensor([1.0, 4.0], dtype=torch.float64)
        >>> fi.root_vjp(T, a / 2, (a,), torch.ones(2, dtype=torch.float64))
        (tensor([0.5000, 0.5000], dtype=torch.float64),)
    """

    label = "root_vjp(optimality_fn, solution, args, cotangent)"
    solver = as_linear_solver(solve, label)
    leaves, spec, positions = _split_tensors(args)
    out, pullback = _func.vjp(
        lambda *values: optimality_fn(solution, *_with_values(leaves, spec, positions, values)),
        *[leaves[k] for k in positions],
    )
    check_same_layout(out, solution, label, "optimality_fn(solution, *args)", "the solution")
    check_finite(
        cotangent,
        f"{label}: the cotangent of the solution contains NaN or Inf; the outer loss or "
        "its gradient is not finite.",
    )
    u = solve_tree(transposed_solve(optimality_fn, solver, label), cotangent, (solution, *args))
    grads = pullback(_tree.scale(-1.0, u))
    result: list[Any] = [None] * len(leaves)
    for k, g in zip(positions, grads, strict=True):
        result[k] = g
    return tuple(_tree.unflatten(spec, result))


def root_jvp(
    optimality_fn: Callable[..., TensorTree],
    solution: TreeT,
    args: Sequence[Any],
    tangents: Sequence[Any],
    *,
    solve: LinearSolveArg = None,
) -> TreeT:
    """Forward-mode derivative of a root: ``dtheta*/dargs . tangents``.

    Solves ``A s = -B t`` with ``A = dT/dtheta`` and ``B t`` the JVP of ``T`` in its
    arguments along ``tangents``; each position's tangent counts, also where one tensor
    object is passed in several positions.

    Args:
        optimality_fn: ``T(theta, *args)``, a pytree shaped like ``theta``.
        solution: ``theta*`` with ``T(theta*, *args) = 0``.
        args: the arguments of ``T``.
        tangents: one tangent pytree per argument, shaped like it (tensor leaves only).
        solve: the linear solver for ``A s = -B t``; defaults to ``Auto()``: dense LU up to
            500 unknowns, GMRES beyond.

    Returns:
        The tangent of the solution, shaped like ``solution``.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):  # root x* = a / 2
        ...     return 2 * x - a
        >>> a = torch.tensor([1.0, 4.0], dtype=torch.float64)
        >>> fi.root_jvp(T, a / 2, (a,), (torch.ones(2, dtype=torch.float64),))
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    label = "root_jvp(optimality_fn, solution, args, tangents)"
    if len(tangents) != len(args):
        raise ValueError(
            f"{label}: expected one tangent per argument ({len(args)}); received {len(tangents)}."
        )
    solver = as_linear_solver(solve, label)
    leaves, spec, positions = _split_tensors(args)
    tangent_leaves = _tree.flatten(tuple(tangents))[0]
    if len(tangent_leaves) == len(leaves):  # one tangent per leaf: those of tensors count
        tensor_tangents = [tangent_leaves[k] for k in positions]
    elif len(tangent_leaves) == len(positions):  # tangents for the tensor leaves only
        tensor_tangents = list(tangent_leaves)
    else:
        raise ValueError(
            f"{label}: expected tangents shaped like args ({len(leaves)} leaves, "
            f"{len(positions)} of them tensors); received {len(tangent_leaves)} leaves."
        )
    out, b_t = _func.jvp(
        lambda *values: optimality_fn(solution, *_with_values(leaves, spec, positions, values)),
        tuple(leaves[k] for k in positions),
        tuple(tensor_tangents),
    )
    check_same_layout(out, solution, label, "optimality_fn(solution, *args)", "the solution")
    return solve_tree(  # type: ignore[no-any-return]
        forward_solve(optimality_fn, solver, label), _tree.scale(-1.0, b_t), (solution, *args)
    )

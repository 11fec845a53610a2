"""``hypergradient``: the meta-gradient through a root, written with plain operations.

For an outer loss ``L(theta*, a)`` at a root ``T(theta*, a) = 0``, the implicit function
theorem gives ``dtheta*/da = -A^{-1} B`` (``A = dT/dtheta``, ``B = dT/da``), so

    dL/da = dL/da|_theta  -  B^T u,    where  A^T u = dL/dtheta.

Every step is a ``torch.func.vjp`` or a linear solver's loop, never an ``autograd.Function``,
so the whole computation traces as one graph: ``torch.compile(..., fullgraph=True)`` compiles
it, alone and under ``vmap`` over tasks, which the rule attached by ``implicit_root`` cannot
offer on torch 2.13 (dynamo does not trace an ``autograd.Function`` with a custom ``jvp``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import check_same_layout, floating_leaves
from .._core.result import LinearSolveResult, report
from .._linear.base import LinearSolveArg
from .decorators import _check_solver, _normalize_argnums
from .derivatives import check_finite

__all__ = ["Hypergradient", "hypergradient"]

_CALL = "fi.hypergradient(outer_fn, optimality_fn, solution, *args)"


class Hypergradient(NamedTuple):
    """What :func:`hypergradient` returns (a pytree: it passes through ``vmap``).

    Attributes:
        grad: ``dL/da`` for the argument chosen by ``argnums`` (a tuple of them when
            ``argnums`` is a tuple), each shaped like its argument.
        value: the outer loss ``L(solution, *args)``.
        adjoint: the solve of ``A^T u = dL/dtheta`` with its statistics; under
            ``torch.compile`` nothing is reported, so ``adjoint.converged`` is the check.
    """

    grad: Any
    value: torch.Tensor
    adjoint: LinearSolveResult[Any]


def _replaced(args: tuple[Any, ...], positions: Sequence[int], values: Sequence[Any]) -> list[Any]:
    out = list(args)
    for k, value in zip(positions, values, strict=True):
        out[k] = value
    return out


def hypergradient(
    outer_fn: Callable[..., torch.Tensor],
    optimality_fn: Callable[..., Any],
    solution: Any,
    *args: Any,
    argnums: int | tuple[int, ...] = 1,
    solve: LinearSolveArg = None,
) -> Hypergradient:
    """The gradient of ``outer_fn(theta*, *args)`` through a root ``theta*`` of ``optimality_fn``.

    ``solution`` is ``theta*``, found any way at all (it is detached: the solver's iterations
    are never differentiated). With ``A = dT/dtheta`` and ``B = dT/da`` at the solution, one
    linear solve ``A^T u = dL/dtheta`` (``A^T`` applied by a VJP of ``optimality_fn``, never
    formed) and one VJP in the chosen arguments give ``dL/da = dL/da|_theta - B^T u``.

    Unlike :func:`implicit_root`, this is built from ``torch.func.vjp`` and the solver's loop
    only, so it compiles as one graph (``torch.compile(..., fullgraph=True)``), alone and
    under ``vmap`` over tasks: the compiled per-task meta-gradient step. Under compile a
    solver runs its full ``maxiter`` (keep it small) and reports nothing: check
    ``result.adjoint.converged``. Differentiating the returned gradient again differentiates
    the solver's iterations (for exact second derivatives use :func:`implicit_root` eagerly).

    Args:
        outer_fn: ``L(theta, *args)``, returning a scalar tensor.
        optimality_fn: ``T(theta, *args)``, returning a pytree shaped like ``theta`` that is
            zero at the solution (for a minimization, the gradient of the inner objective).
        solution: the root ``theta*``, a pytree of floating tensors.
        *args: the arguments both functions take after ``theta``.
        argnums: positions in ``(solution, *args)`` to differentiate (``0`` is the
            solution itself, which is not an input); a tuple gives a tuple of gradients.
        solve: the linear solver for ``A^T`` (default ``GMRES()``; ``CG()`` when ``A`` is a
            symmetric positive definite Hessian). Under compile give it a small ``maxiter``.

    Returns:
        A :class:`Hypergradient` ``(grad, value, adjoint)``.

    Raises:
        TypeError: for bad ``argnums``, a non-tensor or non-floating argument to
            differentiate, or a non-scalar outer loss.
        ValueError: when ``optimality_fn`` returns a pytree unlike ``solution``, or the
            outer loss's gradient is not finite (eager only).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def stationarity(w, lam, X, y):  # gradient of the ridge objective
        ...     return X.T @ (X @ w - y) + lam * w
        >>> def val_loss(w, lam, X, y):
        ...     return ((X @ w - y) ** 2).mean()
        >>> X, y = torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        >>> lam = torch.tensor(1.0, dtype=torch.float64)
        >>> w = torch.linalg.solve(X.T @ X + lam * torch.eye(3, dtype=torch.float64), X.T @ y)
        >>> result = fi.hypergradient(val_loss, stationarity, w, lam, X, y, solve=fi.CG())
        >>> round(float(result.grad), 6)  # d/dlam mean((1/(1+lam) - 1)^2) at lam = 1
        0.25
    """
    positions = _normalize_argnums(argnums, _CALL, "the solution")
    order = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if positions is None or len(positions) != len(order):
        raise ValueError(f"{_CALL}: argnums must not repeat a position; received {argnums!r}.")
    if positions[-1] > len(args):
        raise ValueError(
            f"{_CALL}: argnums={argnums!r} is out of range: received the solution and "
            f"{len(args)} arguments (positions 1..{len(args)})."
        )
    if not callable(outer_fn) or not callable(optimality_fn):
        raise TypeError(f"{_CALL}: outer_fn and optimality_fn must be callables.")
    solver = _check_solver(solve, _CALL)
    floating_leaves(solution, _CALL, "the solution")
    chosen = [k - 1 for k in order]  # in the caller's order, like torch.func.grad
    for k in chosen:
        floating_leaves(args[k], _CALL, f"argument {k + 1} (differentiated by argnums)")
    theta = _tree.map_leaves(torch.Tensor.detach, solution)
    a = [args[k] for k in chosen]

    # dL/dtheta and the direct part dL/da|_theta: one VJP of the outer loss.
    value, outer_pullback = _func.vjp(
        lambda th, *values: outer_fn(th, *_replaced(args, chosen, values)), theta, *a
    )
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        raise TypeError(
            f"{_CALL}: outer_fn must return a scalar tensor (the loss); received "
            + (
                f"a tensor of shape {tuple(value.shape)}."
                if isinstance(value, torch.Tensor)
                else f"{type(value).__name__}."
            )
        )
    dl_dtheta, *dl_da = outer_pullback(torch.ones_like(value))
    check_finite(
        dl_dtheta,
        f"{_CALL}: the gradient of outer_fn at the solution contains NaN or Inf.",
    )

    # u -> A^T u, the VJP of T in theta, linearized once at the solution.
    residual, transpose = _func.vjp(lambda th: optimality_fn(th, *args), theta)
    check_same_layout(residual, theta, _CALL, "optimality_fn(solution, *args)", "the solution")
    adjoint = solver.run(lambda u: transpose(u)[0], dl_dtheta)
    report(adjoint, solver.on_failure, f"{_CALL} (the adjoint solve A^T u = dL/dtheta)")

    # B^T u: one VJP of T in the chosen arguments.
    _, args_pullback = _func.vjp(
        lambda *values: optimality_fn(theta, *_replaced(args, chosen, values)), *a
    )
    b_t_u = args_pullback(adjoint.solution)
    grads = tuple(_tree.sub(d, g) for d, g in zip(dl_da, b_t_u, strict=True))
    grad = grads[0] if isinstance(argnums, int) else grads
    return Hypergradient(grad, value, adjoint)

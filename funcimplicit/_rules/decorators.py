"""The public transforms: ``implicit_root`` and ``fixed_point`` decorators."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, ParamSpec, TypeVar, overload

import torch

from .._core import tree as _tree
from .._core.checks import check_same_layout, floating_leaves
from .._core.tree import TensorTree, TreeT
from .._linear.adapter import as_linear_solver
from .._linear.base import LinearSolveArg, LinearSolverBase
from .root import attach

__all__ = ["fixed_point", "implicit_root"]

P = ParamSpec("P")
R = TypeVar("R")
AuxT = TypeVar("AuxT")


def _normalize_argnums(
    argnums: int | Sequence[int] | None, call: str, position_zero: str = "the solver's `init`"
) -> tuple[int, ...] | None:
    if argnums is None:
        return None
    if isinstance(argnums, int):
        items: tuple[Any, ...] = (argnums,)
    elif isinstance(argnums, Sequence) and not isinstance(argnums, str):
        items = tuple(argnums)
    else:
        raise TypeError(
            f"{call}: argnums must be an int, a sequence of ints or None; received {argnums!r}."
        )
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{call}: argnums must be ints; received {argnums!r}.")
        if k == 0:
            raise ValueError(
                f"{call}: argnums={argnums!r} points at position 0, {position_zero}, which is "
                "never differentiated. Count positional arguments from 0 = "
                f"{position_zero}: the first argument after it is 1."
            )
        if k < 0:
            raise ValueError(f"{call}: argnums must be positive positions; received {argnums!r}.")
    if not items:
        raise ValueError(f"{call}: argnums must name at least one argument; received {argnums!r}.")
    return tuple(sorted(set(items)))


def _check_solver(solve: Any, call: str) -> LinearSolverBase:
    return as_linear_solver(solve, call)


def _decorate(
    optimality_fn: Callable[..., Any],
    argnums: int | Sequence[int] | None,
    has_aux: bool,
    solve: LinearSolveArg,
    name: str,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    call = f"{name}(...)"
    if not callable(optimality_fn):
        raise TypeError(f"{call}: expected a callable; received {type(optimality_fn).__name__}.")
    positions = _normalize_argnums(argnums, call)
    solver = _check_solver(solve, call)

    def decorator(inner_solver: Callable[P, R]) -> Callable[P, R]:
        label = f"{name}-decorated {getattr(inner_solver, '__name__', 'solver')}"

        @functools.wraps(inner_solver)
        def solve_with_implicit_derivatives(*args: P.args, **kwargs: P.kwargs) -> R:
            if not args:
                raise TypeError(f"{label}: expected the solver's `init` as first argument.")
            init, rest = args[0], args[1:]
            if positions is not None and positions[-1] > len(rest):
                raise ValueError(
                    f"{label}: argnums={argnums!r} is out of range: the solver received "
                    f"{len(args)} positional arguments (0 = init, 1..{len(rest)} = the rest)."
                )
            # The solver's own iterations are never differentiated: it sees detached inputs.
            detached = tuple(_tree.detached(a) for a in args)
            result: Any = inner_solver(
                *detached, **{k: _tree.detached(v) for k, v in kwargs.items()}
            )
            if has_aux:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise TypeError(
                        f"{label}: has_aux=True expects the solver to return (solution, aux); "
                        f"received {type(result).__name__}."
                    )
                solution, aux = result
            else:
                solution, aux = result, None
            floating_leaves(solution, label, "the solution")
            if _has_tensors(init):
                check_same_layout(solution, init, label, "the solution", "init")
            _check_solution_finite(solution, label)
            chosen = list(range(len(rest))) if positions is None else [k - 1 for k in positions]
            rule: Callable[..., Any] = optimality_fn
            keywords = _keywords_for(optimality_fn, kwargs)
            if keywords:
                # T(theta, *rest, **keywords): the keywords travel as one explicit argument
                # more; with argnums, only those whose signature position it names move.
                if positions is not None:
                    keywords = {
                        k: v
                        if _signature_position(inner_solver, k) in positions
                        else _tree.detached(v)
                        for k, v in keywords.items()
                    }
                rule = _KeywordsLast(optimality_fn)
                rest = (*rest, keywords)
                chosen.append(len(rest) - 1)
            out = attach(rule, solution, tuple(rest), chosen, solver, label)
            return (out, aux) if has_aux else out  # type: ignore[return-value]

        return solve_with_implicit_derivatives

    return decorator


def _keywords_for(optimality_fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The solver's keyword arguments that ``T`` takes (by name, or through ``**kwargs``).

    A keyword ``T`` does not accept cannot change ``T``'s value, so it is the solver's alone
    (an option such as ``steps=60``); every other one reaches ``T``, as the call gave it.
    """
    if not kwargs:
        return {}
    target = getattr(optimality_fn, "fixed_point_fn", optimality_fn)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature to read: T gets them all
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(kwargs)
    named = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in kwargs.items() if k in named}


def _signature_position(solver: Callable[..., Any], name: str) -> int | None:
    """The position of parameter ``name`` in the solver's signature (``None`` if keyword-only)."""
    try:
        parameters = list(inspect.signature(solver).parameters.values())
    except (TypeError, ValueError):
        return None
    for k, p in enumerate(parameters):
        if p.name == name:
            return k if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else None
    return None


class _KeywordsLast:
    """``T(theta, *args, keywords) = optimality_fn(theta, *args, **keywords)``."""

    def __init__(self, optimality_fn: Callable[..., Any]) -> None:
        self.optimality_fn = optimality_fn

    def __call__(self, theta: Any, *args: Any) -> Any:
        *positional, keywords = args
        return self.optimality_fn(theta, *positional, **keywords)


def _has_tensors(tree: Any) -> bool:
    try:
        leaves, _ = _tree.flatten(tree)
    except Exception:  # not a pytree optree can walk
        return False
    return bool(leaves) and all(isinstance(leaf, torch.Tensor) for leaf in leaves)


def _check_solution_finite(solution: Any, label: str) -> None:
    from .derivatives import check_finite

    check_finite(
        solution,
        f"{label}: the solver returned a solution containing NaN or Inf, so it has no "
        "implicit derivative. Check the solver's convergence (step size, iterations).",
    )


@overload
def implicit_root(
    optimality_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    has_aux: Literal[False] = False,
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, TreeT]], Callable[P, TreeT]]: ...
@overload
def implicit_root(
    optimality_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    *,
    has_aux: Literal[True],
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, tuple[TreeT, AuxT]]], Callable[P, tuple[TreeT, AuxT]]]: ...
@overload
def implicit_root(
    optimality_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None,
    has_aux: Literal[True],
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, tuple[TreeT, AuxT]]], Callable[P, tuple[TreeT, AuxT]]]: ...
@overload
def implicit_root(
    optimality_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    has_aux: bool = False,
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]: ...
def implicit_root(
    optimality_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    has_aux: bool = False,
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Give any solver of ``T(theta, *args) = 0`` implicit derivatives in its arguments.

    The decorated ``solver(init, *args)`` runs as written, on detached inputs, so its own
    iterations are never differentiated. Its solution ``theta*`` then carries the implicit
    derivative ``dtheta*/dargs = -A^{-1} B`` (``A = dT/dtheta``, ``B = dT/dargs``), applied
    with one linear solve per derivative: reverse mode solves ``A^T u = v``, forward mode
    ``A s = -B t``. Works with ``torch.autograd`` and every ``torch.func`` transform
    (grad, vjp, jacrev, jvp, jacfwd, hessian as forward-over-reverse, vmap).

    Args:
        optimality_fn: ``T(theta, *args)`` returning a pytree shaped like ``theta``, zero at
            the solution (for a minimization, the gradient of the objective). It may be any
            callable (a function, closure, bound method or ``nn.Module``): every tensor it
            reads gets its first derivative; second derivatives are exact for ``args`` and
            refused through captured tensors. Keyword arguments of the solver reach it when
            it takes them by name.
        argnums: positions in the solver's signature that get derivatives (``0`` is
            ``init``, never differentiated); ``None`` means every argument after ``init``.
            Other arguments are constants.
        has_aux: the solver returns ``(solution, aux)``; ``aux`` passes through untouched.
        solve: the linear solver for ``A`` (default ``Auto()``: dense LU up to 500 unknowns,
            GMRES beyond; ``Auto(symmetric=True)`` or ``CG()`` when ``A`` is a symmetric
            positive definite Hessian).

    Returns:
        A decorator that keeps the solver's signature.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def stationarity(x, a):  # gradient of 0.5 * ||x||^2 - a . sin(x)... simplified
        ...     return x - a
        >>> @fi.implicit_root(stationarity, solve=fi.CG())
        ... def solver(init, a):
        ...     return a.clone()  # the exact root, found any way at all
        >>> a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> (solver(torch.zeros(2, dtype=torch.float64), a) ** 2).sum().backward()
        >>> a.grad
        tensor([2., 4.], dtype=torch.float64)
    """
    return _decorate(optimality_fn, argnums, has_aux, solve, "implicit_root")


@overload
def fixed_point(
    fixed_point_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    has_aux: Literal[False] = False,
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, TreeT]], Callable[P, TreeT]]: ...
@overload
def fixed_point(
    fixed_point_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    *,
    has_aux: Literal[True],
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, tuple[TreeT, AuxT]]], Callable[P, tuple[TreeT, AuxT]]]: ...
@overload
def fixed_point(
    fixed_point_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None,
    has_aux: Literal[True],
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, tuple[TreeT, AuxT]]], Callable[P, tuple[TreeT, AuxT]]]: ...
@overload
def fixed_point(
    fixed_point_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    has_aux: bool = False,
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]: ...
def fixed_point(
    fixed_point_fn: Callable[..., TensorTree],
    argnums: int | Sequence[int] | None = None,
    has_aux: bool = False,
    solve: LinearSolveArg = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Give any solver of ``theta = F(theta, *args)`` implicit derivatives in its arguments.

    The root of ``T(theta, *args) = theta - F(theta, *args)``: ``A = I - dF/dtheta``, which
    is not symmetric, so the default linear solver is ``Auto()`` (dense LU while small,
    GMRES beyond); ``Neumann()`` also applies
    when ``F`` is a contraction. See :func:`implicit_root` for the arguments.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def F(z, w):  # a contraction with fixed point z* = w / (1 - 0.5)
        ...     return 0.5 * z + w
        >>> @fi.fixed_point(F)
        ... def iterate(z, w):
        ...     for _ in range(60):
        ...         z = F(z, w)
        ...     return z
        >>> w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        >>> iterate(torch.zeros(1, dtype=torch.float64), w).sum().backward()
        >>> w.grad  # d z*/dw = 1 / (1 - 0.5)
        tensor([2.], dtype=torch.float64)
    """
    if not callable(fixed_point_fn):
        raise TypeError(
            f"fixed_point(...): expected a callable; received {type(fixed_point_fn).__name__}."
        )
    return _decorate(_FixedPointResidual(fixed_point_fn), argnums, has_aux, solve, "fixed_point")


class _FixedPointResidual:
    """``T(theta, *args) = theta - F(theta, *args)``: a root exactly at a fixed point of F."""

    def __init__(self, fixed_point_fn: Callable[..., Any]) -> None:
        self.fixed_point_fn = fixed_point_fn

    def __call__(self, theta: Any, *args: Any, **kwargs: Any) -> Any:
        return _tree.sub(theta, self.fixed_point_fn(theta, *args, **kwargs))

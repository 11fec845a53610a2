"""The backward linear solve of the implicit rule, compiled once per operator.

When a user compiles code that calls an implicit function, dynamo breaks its graph at the
rule's ``autograd.Function`` (a custom ``jvp`` is not traceable on torch 2.13) and the rule
runs eagerly. In a classic first-order backward (``.backward()`` or ``torch.autograd.grad``
without ``create_graph``), the rule's work is one linear solve

    A^T u = v,   A = dT/dtheta at the solution,   A^T u = VJP of T in theta,

which, run eagerly, costs one Python-level VJP per solver iteration: most of a small
problem's time. There the rule calls a compiled solve instead: ``torch.func.vjp`` of ``T``
and the solver's loop traced as one graph (the loop runs its full ``maxiter``, finished
elements frozen, as every compiled solve does). The result equals the eager solve up to
rounding: same iterations, same operator.

One compiled function per ``(optimality function, solver)`` pair is kept (the most recent
:data:`CACHE_SIZE`), so repeated calls with new tensors of the same shapes reuse the compiled
code. Only eager backward passes of calls that were themselves compiled get here: an eager
user never pays a compile.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.compat import physical
from .._core.result import LinearSolveResult
from .._linear.base import LinearSolverBase
from .linear import run_square

__all__ = ["CACHE_SIZE", "adjoint_kernel", "compiled_adjoint", "plain"]

#: How many compiled backward solves are kept (one per operator and solver).
CACHE_SIZE = 16

#: The backend of the compiled solves (``torch.compile``'s default; tests use ``aot_eager``).
BACKEND: str | Callable[..., Any] = "inductor"

AdjointKernel = Callable[[Any, tuple[Any, ...], Any], tuple[LinearSolveResult[Any], torch.Tensor]]

# (id(optimality_fn), id(solver)) -> (optimality_fn, solver, kernel): holding both objects
# keeps their ids from being reused while the entry lives. ``None``: compiling failed once.
_CACHE: OrderedDict[tuple[int, int], tuple[Any, Any, AdjointKernel | None]] = OrderedDict()


def plain(tensors: Any) -> bool:
    """Whether every tensor is a plain one (no ``torch.func`` wrapper): what compiled code
    can take ("Cannot access storage of TensorWrapper" otherwise)."""
    return all(physical(t) is t for t in tensors if isinstance(t, torch.Tensor))


def compiled_adjoint(
    optimality_fn: Callable[..., Any],
    solver: LinearSolverBase,
    solution: Any,
    args: tuple[Any, ...],
    v: Any,
) -> tuple[LinearSolveResult[Any], torch.Tensor] | None:
    """The compiled solve of ``A^T u = v`` (see :func:`adjoint_kernel`), or ``None`` where it
    cannot be compiled (the caller then solves eagerly: slower, the same answer).

    A failure to compile (e.g. inductor without a working C++ compiler, or an operator dynamo
    cannot trace) is reported once per operator with a ``UserWarning`` and not retried.
    """
    kernel = adjoint_kernel(optimality_fn, solver)
    if kernel is None:
        return None
    try:
        return kernel(solution, args, v)
    except Exception as error:  # compiling failed: run eagerly from now on for this pair
        _CACHE[(id(optimality_fn), id(solver))] = (optimality_fn, solver, None)
        warnings.warn(
            "funcimplicit: the compiled backward solve of a compiled caller failed "
            f"({type(error).__name__}: {str(error)[:200]}); it runs eagerly instead, with "
            "the same result.",
            UserWarning,
            stacklevel=2,
        )
        return None


def adjoint_kernel(
    optimality_fn: Callable[..., Any], solver: LinearSolverBase
) -> AdjointKernel | None:
    """``(solution, args, v) -> (solver.run(A^T, v), all(isfinite(v)))`` compiled, for
    ``A = dT/dtheta``; the flag lets the caller check ``v`` and the solve with one host read.

    ``A^T u`` is ``torch.func.vjp`` of ``theta -> T(theta, *args)`` at ``solution``: its
    forward pass runs once per solve, each iteration applies only the pullback.
    """
    key = (id(optimality_fn), id(solver))
    entry = _CACHE.get(key)
    if entry is not None:
        _CACHE.move_to_end(key)
        return entry[2]

    def adjoint(
        solution: Any, args: tuple[Any, ...], v: Any
    ) -> tuple[LinearSolveResult[Any], torch.Tensor]:
        _, transpose = _func.vjp(lambda theta: optimality_fn(theta, *args), solution)
        finite = torch.stack([torch.isfinite(t).all() for t in _tree.flatten(v)[0]]).all()
        return run_square(solver, lambda u: transpose(u)[0], v, None), finite

    kernel: AdjointKernel = torch.compile(adjoint, backend=BACKEND)
    _CACHE[key] = (optimality_fn, solver, kernel)
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return kernel

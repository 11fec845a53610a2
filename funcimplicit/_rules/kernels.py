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

One compiled function serves every operator: the optimality function and the solver are
arguments, which dynamo guards by what it reads of them (the function's code and closure, the
solver's settings), not by their identity. So repeated calls with new tensors of the same
shapes, and new but equal solver objects or wrapper objects built per call, reuse the compiled
code; each other operator compiles once more, up to dynamo's recompile limit, beyond which the
solve runs eagerly. Only eager backward passes of calls that were themselves compiled get
here: an eager user never pays a compile.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.compat import physical
from .._core.result import LinearSolveResult
from .._linear.auto import Auto
from .._linear.base import IterativeSolver, LinearSolverBase, default_maxiter
from .linear import run_square

__all__ = ["BACKEND", "compiled_adjoint", "plain"]

#: The backend of the compiled solves (``torch.compile``'s default; tests use ``aot_eager``).
BACKEND: str | Callable[..., Any] = "inductor"

#: How many backward solves ran compiled (a count for tests and benchmarks).
compiled_calls = 0

#: The longest loop compiled: a compiled loop runs all of its ``maxiter`` (a static trip
#: count) and inductor's compile time grows with it (a 1000-step CG, CG's default at
#: n = 100, compiled for over ten minutes here). A solver whose loop may run longer solves
#: eagerly, where it also stops early; give it ``maxiter <= 200`` to have it compiled.
MAX_COMPILED_STEPS = 200

Adjoint = Callable[
    [Callable[..., Any], LinearSolverBase, Any, tuple[Any, ...], Any],
    tuple[LinearSolveResult[Any], torch.Tensor],
]

# backend -> the compiled solve; None once compiling has failed (then every solve is eager).
_COMPILED: dict[Any, Adjoint | None] = {}


def plain(tensors: Any) -> bool:
    """Whether every tensor is a plain one (no ``torch.func`` wrapper): what compiled code
    can take ("Cannot access storage of TensorWrapper" otherwise)."""
    return all(physical(t) is t for t in tensors if isinstance(t, torch.Tensor))


def _adjoint(
    optimality_fn: Callable[..., Any],
    solver: LinearSolverBase,
    solution: Any,
    args: tuple[Any, ...],
    v: Any,
) -> tuple[LinearSolveResult[Any], torch.Tensor]:
    """``(solver.run(A^T, v), all(isfinite(v)))`` for ``A = dT/dtheta`` at ``solution``.

    ``A^T u`` is ``torch.func.vjp`` of ``theta -> T(theta, *args)``: its forward pass runs
    once per solve, each iteration applies only the pullback. The flag lets the caller check
    ``v`` and the solve with one host read.
    """
    _, transpose = _func.vjp(lambda theta: optimality_fn(theta, *args), solution)
    finite = torch.stack([torch.isfinite(t).all() for t in _tree.flatten(v)[0]]).all()
    return run_square(solver, lambda u: transpose(u)[0], v, None), finite


def _steps(solver: Any, v: Any) -> int:
    """The iterations ``solver``'s loop may run on ``v`` (1 for a direct solve): its own
    ``maxiter``, the default cap ``max(10 n, 100)`` where that is ``None``, or its inner
    solver's (``Normal``). ``Auto`` on a system it factorizes runs no loop."""
    inner = getattr(solver, "inner", None)
    if isinstance(inner, LinearSolverBase):
        return _steps(inner, v)
    size = _tree.size(v)
    if isinstance(solver, Auto) and size <= solver.max_dense:
        return 1
    if not isinstance(solver, IterativeSolver | Auto):
        return 1  # a direct solve, or a user's solver: compiled as written
    maxiter = getattr(solver, "maxiter", None)
    return default_maxiter(size) if maxiter is None else int(maxiter)


def compiled_adjoint(
    optimality_fn: Callable[..., Any],
    solver: LinearSolverBase,
    solution: Any,
    args: tuple[Any, ...],
    v: Any,
) -> tuple[LinearSolveResult[Any], torch.Tensor] | None:
    """:func:`_adjoint` compiled, or ``None`` where it cannot be compiled (the caller then
    solves eagerly: slower, the same answer).

    A failure to compile (e.g. inductor without a working C++ compiler) is reported once
    with a ``UserWarning``; the compiled solve is not tried again in this process. A loop
    longer than :data:`MAX_COMPILED_STEPS` is not compiled (``None``).
    """
    global compiled_calls
    if _steps(solver, v) > MAX_COMPILED_STEPS:
        return None
    if BACKEND not in _COMPILED:
        _COMPILED[BACKEND] = torch.compile(_adjoint, backend=BACKEND)
    kernel = _COMPILED[BACKEND]
    if kernel is None:
        return None
    try:
        out = kernel(optimality_fn, solver, solution, args, v)
    except Exception as error:  # compiling failed: every later solve runs eagerly
        _COMPILED[BACKEND] = None
        warnings.warn(
            "funcimplicit: the compiled backward solve of a compiled caller failed "
            f"({type(error).__name__}: {str(error)[:200]}); it runs eagerly instead, with "
            "the same result.",
            UserWarning,
            stacklevel=2,
        )
        return None
    compiled_calls += 1
    return out

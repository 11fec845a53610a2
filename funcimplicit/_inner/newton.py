"""Newton's method for roots, with an optional backtracking line search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.loop import ALL_DONE, checked, progress
from .._linear.adapter import as_linear_solver
from .._linear.base import LinearSolver
from .._linear.gmres import GMRES
from .base import InnerMethod, InnerProblem

__all__ = ["Newton", "RootStepMethod", "RootValues", "backtrack", "merit_of"]

#: The state of methods that keep ``(T(x), ||T(x)||)`` at the current ``x``.
RootValues = tuple[Any, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class RootStepMethod(InnerMethod):
    """A method whose state is ``(T(x), ||T(x)||)`` at the current ``x`` (Newton, gradient
    descent): it defines ``step``, which ends with ``self.init(problem, x_new)``."""

    def init(self, problem: InnerProblem, x: Any) -> RootValues:
        t = problem.root(x)
        return t, _tree.norm(t)

    def residual_norm(self, problem: InnerProblem, x: Any, state: RootValues) -> torch.Tensor:
        return state[1]


def backtrack(
    problem: InnerProblem,
    x: Any,
    direction: Any,
    merit_x: torch.Tensor,
    slope: torch.Tensor,
    merit: Any,
    max_steps: int,
    check_every: int | None = 1,
) -> Any:
    """Armijo backtracking: the largest ``t`` in ``1, 1/2, ...`` with
    ``merit(x + t d) <= merit(x) + 1e-4 t slope``; the last ``t`` if none qualifies.
    ``check_every`` as in :func:`~funcimplicit._core.loop.iterate` (``None``: no host read,
    all ``max_steps`` trials)."""
    t = torch.ones_like(merit_x)
    accepted = torch.zeros_like(merit_x, dtype=torch.bool)
    for k in range(max_steps):
        trial = merit(_tree.axpy(t, direction, x))
        good = torch.isfinite(trial) & (trial <= merit_x + 1e-4 * t * slope)
        accepted = accepted | good
        if checked(k, check_every) and progress(accepted) == ALL_DONE:
            break
        t = torch.where(accepted, t, 0.5 * t)
    return _tree.axpy(t, direction, x)


@dataclass(frozen=True, kw_only=True)
class Newton(RootStepMethod):
    """Newton's method for ``T(x) = 0``: solve ``J s = -T(x)`` with any linear solver.

    ``J`` is applied as a JVP of ``T`` (never formed unless ``solve`` is dense). With
    ``backtracking``, the step is shortened (halved up to ``max_backtracks`` times) until
    the merit ``||T||^2 / 2`` (the objective, when minimizing) decreases enough. For a
    minimization ``J`` is the Hessian: ``solve=fi.CG()`` gives Newton-CG.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):
        ...     return x ** 3 - a
        >>> a = torch.tensor([8.0, 27.0], dtype=torch.float64)
        >>> fi.solve_root(T, torch.ones(2, dtype=torch.float64), a, method=fi.Newton()).value
        tensor([2., 3.], dtype=torch.float64)
    """

    # Typed as the protocol (what reading ``.solve`` gives); a plain callable
    # ``solve(matvec, b) -> x`` is accepted too and wrapped at construction.
    solve: LinearSolver = field(default_factory=lambda: GMRES(on_failure="ignore"))
    backtracking: bool = True
    max_backtracks: int = 20
    maxiter: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "solve", as_linear_solver(self.solve, "Newton(solve=...)"))
        if not isinstance(self.max_backtracks, int) or self.max_backtracks < 1:
            raise ValueError(f"Newton: max_backtracks must be >= 1; got {self.max_backtracks!r}.")

    def step(
        self, problem: InnerProblem, x: Any, state: RootValues, iteration: int
    ) -> tuple[Any, RootValues]:
        t = state[0]
        minimizing = problem.objective is not None
        # J s = -T(x), J v = d/de T(x + e v); a Hessian (minimizing) is its own transpose
        if minimizing:
            _, pullback = _func.vjp(problem.root, x)
            jacobian = lambda v: pullback(v)[0]  # noqa: E731
        else:
            jacobian = _func.linearize(problem.root, x)
        s = as_linear_solver(self.solve, "Newton").run(jacobian, _tree.scale(-1.0, t)).solution
        if self.backtracking:
            merit = merit_of(problem)
            # slope of the merit along s: grad(L) . s, or -||T||^2 for the exact step
            slope = _tree.vdot(t, s) if minimizing else -_tree.vdot(t, t)
            x = backtrack(
                problem, x, s, merit(x), slope, merit, self.max_backtracks, self.check_every
            )
        else:
            x = _tree.add(x, s)
        return x, self.init(problem, x)


def merit_of(problem: InnerProblem) -> Callable[[Any], torch.Tensor]:
    """The merit a line search decreases: the objective when minimizing, else ``||T||^2 / 2``."""
    if problem.objective is not None:
        return problem.objective

    def half_squared_root(x: Any) -> torch.Tensor:
        t = problem.root(x)
        return 0.5 * _tree.vdot(t, t)

    return half_squared_root

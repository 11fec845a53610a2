"""Gradient descent with a backtracking line search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._core import tree as _tree
from .base import InnerProblem
from .newton import RootStepMethod, RootValues, backtrack

__all__ = ["GradientDescent"]


@dataclass(frozen=True, kw_only=True)
class GradientDescent(RootStepMethod):
    """Gradient descent ``x <- x - step_size * grad L(x)`` for :func:`minimize`.

    With ``backtracking``, each step starts at ``step_size`` and is halved until the
    Armijo condition holds. Also usable on a root problem (``x <- x - step_size T(x)``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def L(x, a):
        ...     return ((x - a) ** 2).sum()
        >>> a = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> sol = fi.minimize(L, torch.zeros(2, dtype=torch.float64), a,
        ...                   method=fi.GradientDescent(step_size=0.25))
        >>> sol.value.round(decimals=8), bool(sol.converged)
        (tensor([ 1., -1.], dtype=torch.float64), True)
    """

    step_size: float = 1e-2
    backtracking: bool = False
    max_backtracks: int = 20
    maxiter: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.step_size, int | float) or not self.step_size > 0:
            raise ValueError(f"GradientDescent: step_size must be > 0; got {self.step_size!r}.")

    # x <- x - step_size T(x), T = grad L when minimizing
    def step(
        self, problem: InnerProblem, x: Any, state: RootValues, iteration: int
    ) -> tuple[Any, RootValues]:
        t, objective = state[0], problem.objective
        direction = _tree.scale(-self.step_size, t)
        if self.backtracking and objective is not None:
            slope = -self.step_size * _tree.vdot(t, t)
            x = backtrack(
                problem,
                x,
                direction,
                objective(x),
                slope,
                objective,
                self.max_backtracks,
                self.check_every,
            )
        else:
            x = _tree.add(x, direction)
        return x, self.init(problem, x)

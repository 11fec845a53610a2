"""Fixed-point methods: damped fixed-point iteration and Anderson acceleration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import tree as _tree
from .._core.loop import safe_div
from .base import InnerMethod, InnerProblem

#: Fixed-point iteration's state: ``(F(x), ||F(x) - x||)``.
_Values = tuple[Any, torch.Tensor]
#: Anderson's state: ``(F(x), ||F(x) - x||, iterates, values)`` (histories as rows).
_History = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = ["Anderson", "FixedPointIteration"]


def _check_fraction(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{owner}: {name} must be in (0, 1]; received {value!r}.")


@dataclass(frozen=True, kw_only=True)
class FixedPointIteration(InnerMethod):
    """Damped fixed-point iteration ``x <- (1 - damping) x + damping F(x)``.

    Converges linearly for a contraction (rate = its Lipschitz constant); one evaluation of
    ``F`` per iteration, nothing stored.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def F(x, theta):
        ...     return torch.cos(x) + theta
        >>> sol = fi.solve_fixed_point(F, torch.zeros((), dtype=torch.float64),
        ...                            torch.tensor(0.0, dtype=torch.float64),
        ...                            method=fi.FixedPointIteration(maxiter=200))
        >>> round(float(sol.value), 6), bool(sol.converged)
        (0.739085, True)
    """

    damping: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction(type(self).__name__, "damping", self.damping)

    # State: F(x) and ||F(x) - x||, both at the current x.
    def init(self, problem: InnerProblem, x: Any) -> _Values:
        fx = problem.fixed_point(x)
        return fx, _tree.norm(_tree.sub(fx, x))

    # x <- x + damping (F(x) - x); the residual ||F(x) - x|| is measured at the new x
    def step(
        self, problem: InnerProblem, x: Any, state: _Values, iteration: int
    ) -> tuple[Any, _Values]:
        # undamped: x <- F(x) itself (x + 1 * (F(x) - x) would round, and cost two ops)
        x = state[0] if self.damping == 1.0 else _tree.axpy(self.damping, _tree.sub(state[0], x), x)
        return x, self.init(problem, x)

    def residual_norm(self, problem: InnerProblem, x: Any, state: _Values) -> torch.Tensor:
        return state[1]


@dataclass(frozen=True, kw_only=True)
class Anderson(InnerMethod):
    """Anderson acceleration (type II) of the fixed-point map ``F``.

    Keeps the last ``history`` iterates ``x_i`` and values ``g_i = F(x_i)``, and mixes them
    with weights ``alpha`` that minimize ``||sum_i alpha_i (g_i - x_i)||`` subject to
    ``sum_i alpha_i = 1``:  ``x <- (1 - mixing) sum alpha_i x_i + mixing sum alpha_i g_i``.
    The small least-squares problem is solved through its regularized normal equations
    ``(R R^T + regularization * tr(R R^T) / m * I) a = 1`` (Cholesky), so singular
    histories stay finite; if the weights still fail, the step falls back to a plain
    damped iteration. Solves linear maps that are not contractions, too.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def F(x, c):  # not a contraction: x <- -2 x + c diverges, Anderson does not
        ...     return -2.0 * x + c
        >>> c = torch.tensor([3.0, 6.0], dtype=torch.float64)
        >>> sol = fi.solve_fixed_point(F, torch.zeros(2, dtype=torch.float64), c,
        ...                            method=fi.Anderson())
        >>> sol.value.round(decimals=8), sol.iterations
        (tensor([1., 2.], dtype=torch.float64), tensor(3))
    """

    history: int = 5
    mixing: float = 1.0
    regularization: float = 1e-10

    raveled: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"{owner}: history must be a positive int; received {self.history!r}.")
        _check_fraction(owner, "mixing", self.mixing)
        if not isinstance(self.regularization, int | float) or not self.regularization >= 0:
            raise ValueError(f"{owner}: regularization must be >= 0; got {self.regularization!r}.")

    # State: g = F(x), ||g - x||, and the last ``history`` iterates and values as rows.
    def init(self, problem: InnerProblem, x: torch.Tensor) -> _History:
        g = problem.fixed_point(x)
        r_norm = torch.linalg.vector_norm(g - x)
        rows = torch.zeros(self.history, x.shape[0], dtype=x.dtype, device=x.device) * r_norm
        return g, r_norm, rows, rows

    def step(
        self, problem: InnerProblem, x: torch.Tensor, state: _History, iteration: int
    ) -> tuple[torch.Tensor, _History]:
        g, _, xs, gs = state
        m = self.history
        count = min(iteration + 1, m)  # rows in use: the last ``count``
        # The newest iterate and value replace the oldest rows (the weights do not depend on
        # the rows' order).
        xs = torch.cat((xs[1:], x[None, :]))
        gs = torch.cat((gs[1:], g[None, :]))
        residuals = gs - xs
        eye = torch.eye(m, dtype=x.dtype, device=x.device)
        if count < m:  # the first steps: unused rows count for nothing, weight 0
            used = torch.arange(m, device=x.device) >= m - count
            residuals = residuals * used[:, None]
            unused_diag = torch.diag((~used).to(x.dtype))
            ones = used.to(x.dtype)[:, None]
        else:
            unused_diag = None
            ones = torch.ones(m, 1, dtype=x.dtype, device=x.device)
        # min ||R^T a|| s.t. sum(a) = 1  <=>  a = G^{-1} 1 / (1^T G^{-1} 1), G = R R^T
        gram = residuals @ residuals.mT
        shift = self.regularization * torch.trace(gram) / count
        gram = gram + (shift + torch.finfo(x.dtype).tiny) * eye
        if unused_diag is not None:
            gram = gram + unused_diag
        factor, info = torch.linalg.cholesky_ex(gram)
        weights = torch.cholesky_solve(ones, factor)[:, 0]
        total = weights.sum()
        weights = safe_div(weights, total)
        ok = (info == 0) & torch.isfinite(weights).all() & (total != 0)
        if self.mixing == 1.0:  # undamped: sum a_i g_i, or g itself as the fallback
            mixed, plain = weights @ gs, g
        else:
            mixed = (1 - self.mixing) * (weights @ xs) + self.mixing * (weights @ gs)
            plain = x + self.mixing * (g - x)
        x = torch.where(ok, mixed, plain)
        g = problem.fixed_point(x)
        return x, (g, torch.linalg.vector_norm(g - x), xs, gs)

    def residual_norm(self, problem: InnerProblem, x: Any, state: _History) -> torch.Tensor:
        return state[1]

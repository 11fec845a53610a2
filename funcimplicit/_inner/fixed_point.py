"""Fixed-point methods: damped fixed-point iteration and Anderson acceleration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._core import tree as _tree
from .._core.loop import iterate, safe_div
from .._core.tree import TreeT
from .base import InnerMethod, InnerProblem, Solution, classify

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

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        fx = problem.fixed_point(init)
        r_norm = _tree.norm(_tree.sub(fx, init))

        # x <- x + damping (F(x) - x); the residual ||F(x) - x|| is measured at the new x
        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, fx, _ = state
            x = _tree.axpy(self.damping, _tree.sub(fx, x), x)
            fx = problem.fixed_point(x)
            r_norm = _tree.norm(_tree.sub(fx, x))
            return (x, fx, r_norm), problem.finished(r_norm, x)

        state, iterations, _ = iterate(
            step, (init, fx, r_norm), problem.finished(r_norm, init), self.maxiter
        )
        x, _, r_norm = state
        return classify(x, iterations, r_norm, problem)


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

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"{owner}: history must be a positive int; received {self.history!r}.")
        _check_fraction(owner, "mixing", self.mixing)
        if not isinstance(self.regularization, int | float) or not self.regularization >= 0:
            raise ValueError(f"{owner}: regularization must be >= 0; got {self.regularization!r}.")

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        x0, unravel = _tree.ravel(init)

        def fixed_point(v: torch.Tensor) -> torch.Tensor:
            return _tree.ravel(problem.fixed_point(unravel(v)))[0]

        m = self.history
        g0 = fixed_point(x0)
        r_norm = torch.linalg.vector_norm(g0 - x0)
        xs = torch.zeros(m, x0.shape[0], dtype=x0.dtype, device=x0.device) * r_norm
        gs = xs
        eye = torch.eye(m, dtype=x0.dtype, device=x0.device)
        counter = [0]  # the loop's iteration index, the same for every active element

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, g, xs, gs, _ = state
            k = counter[0]
            counter[0] += 1
            slot = eye[k % m][:, None]
            xs = xs * (1 - slot) + slot * x[None, :]
            gs = gs * (1 - slot) + slot * g[None, :]
            used = torch.arange(m, device=x.device) < min(k + 1, m)
            residuals = (gs - xs) * used[:, None]
            # min ||R^T a|| s.t. sum(a) = 1  <=>  a = G^{-1} 1 / (1^T G^{-1} 1), G = R R^T
            gram = residuals @ residuals.mT
            shift = self.regularization * torch.trace(gram) / min(k + 1, m)
            unused = (~used).to(x.dtype)
            gram = gram + (shift + torch.finfo(x.dtype).tiny) * eye + torch.diag(unused)
            factor, info = torch.linalg.cholesky_ex(gram)
            ones = used.to(x.dtype)[:, None]
            weights = torch.cholesky_solve(ones, factor)[:, 0]
            total = weights.sum()
            weights = safe_div(weights, total)
            ok = (info == 0) & torch.isfinite(weights).all() & (total != 0)
            mixed = (1 - self.mixing) * (weights @ xs) + self.mixing * (weights @ gs)
            plain = x + self.mixing * (g - x)
            x = torch.where(ok, mixed, plain)
            g = fixed_point(x)
            r_norm = torch.linalg.vector_norm(g - x)
            return (x, g, xs, gs, r_norm), problem.finished(r_norm, x)

        done = problem.finished(r_norm, x0)
        state, iterations, _ = iterate(step, (x0, g0, xs, gs, r_norm), done, self.maxiter)
        x, _, _, _, r_norm = state
        return classify(unravel(x), iterations, r_norm, problem)

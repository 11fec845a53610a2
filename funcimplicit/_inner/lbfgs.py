"""L-BFGS for :func:`minimize`, and the Armijo line search it shares with Gauss-Newton."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import tree as _tree
from .._core.loop import ALL_DONE, checked, progress, safe_div
from .base import InnerMethod, InnerProblem

__all__ = ["LBFGS", "armijo"]

#: L-BFGS's state: ``(L, g, ||g||, S, Y, rho, gamma, stopped)`` (see ``LBFGS.init``).
_Memory = tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]

#: Sufficient-decrease constant of the Armijo condition.
ARMIJO_C1 = 1e-4


def armijo(
    objective: Callable[[Any], torch.Tensor],
    x: Any,
    direction: Any,
    value: torch.Tensor,
    slope: torch.Tensor,
    max_steps: int,
    skip: torch.Tensor,
    check_every: int | None = 1,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Backtracking on ``t`` in ``1, 1/2, 1/4, ...`` until
    ``objective(x + t d) <= value + c1 t slope`` (with ``slope = grad . d < 0``).

    Returns ``(x_new, value_new, accepted)`` per element. An element whose condition never
    holds in ``max_steps`` trials does not move (``x_new = x``): the objective never
    increases, by more than its rounding: where ``|t slope|`` is below ``4 eps |L|`` the
    test cannot be resolved in floating point, and a trial no higher than ``L + 4 eps |L|``
    passes. Elements flagged in ``skip`` (finished ones) take no trial at all. ``check_every``
    as in :func:`~funcimplicit._core.loop.iterate` (``None``: no host read, all trials).
    """
    rounding = 4 * torch.finfo(value.dtype).eps
    t = torch.ones_like(value)
    accepted = torch.zeros_like(value, dtype=torch.bool)
    new_value = value
    settled = skip | accepted
    for k in range(max_steps):
        if checked(k, check_every) and progress(settled) == ALL_DONE:
            break
        trial = objective(_tree.axpy(t, direction, x))
        # Where the predicted decrease is below the rounding of L, L cannot resolve it: a
        # trial that does not rise by more than that rounding passes (near a solution).
        noise = rounding * torch.abs(value)
        sufficient = trial <= value + ARMIJO_C1 * t * slope
        unresolved = (-t * slope <= noise) & (trial <= value + noise)
        good = ~settled & torch.isfinite(trial) & (sufficient | unresolved)
        new_value = torch.where(good, trial, new_value)
        accepted = accepted | good
        settled = settled | good
        t = torch.where(settled, t, 0.5 * t)
    x_new = _tree.where(accepted, _tree.axpy(t, direction, x), x)
    return x_new, new_value, accepted


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sum(a * b)  # not torch.dot: the same rounding batched or not (see _tree)


@dataclass(frozen=True, kw_only=True)
class LBFGS(InnerMethod):
    """Limited-memory BFGS for :func:`minimize` (and :func:`least_squares`).

    Keeps the last ``memory`` pairs ``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` and applies
    the inverse-Hessian estimate ``H`` to the gradient by the two-loop recursion, with
    ``H_0 = gamma I``, ``gamma = s^T y / y^T y`` from the newest pair (``min(1, 1/||g_0||)``
    before any). Each step ``x <- x + t d``, ``d = -H g``, takes the largest ``t`` in
    ``1, 1/2, ...`` (at most ``max_backtracks`` halvings) meeting the Armijo condition
    ``L(x + t d) <= L(x) + 1e-4 t g^T d``, so ``L`` never increases. A pair with
    ``s^T y <= 0`` (possible without a Wolfe curvature condition) is not stored, so ``H``
    stays positive definite and ``d`` a descent direction; a step that finds no decrease
    clears the memory and retries from the scaled gradient, and an element for which even
    that fails stops (reported as not converged unless its gradient meets the tolerance).

    Runs under ``vmap`` with per-element state: every element has its own memory, step
    length and stopping decision.

    Attributes:
        memory: number of stored pairs.
        max_backtracks: halvings of the step before it is declared failed.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def L(w, X, y):  # logistic regression with a little ridge
        ...     return torch.nn.functional.softplus(-y * (X @ w)).sum() + 0.05 * (w ** 2).sum()
        >>> X = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -1.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
        >>> sol = fi.minimize(L, torch.zeros(2, dtype=torch.float64), X, y, method=fi.LBFGS())
        >>> bool(sol.converged), bool(sol.residual_norm <= 1e-8)
        (True, True)
    """

    memory: int = 10
    max_backtracks: int = 30
    maxiter: int = 500

    problem_kinds: ClassVar[tuple[str, ...]] = ("minimize", "least_squares")
    raveled: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("memory", "max_backtracks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LBFGS: {name} must be a positive int; received {value!r}.")

    @property
    def failure_hint(self) -> str:
        return (
            "Raise maxiter, loosen rtol/atol, check that the objective is smooth and bounded "
            "below, or try Newton()."
        )

    # State: L(x), g = grad L(x), ||g||, the pairs (s_i, y_i) as rows with rho_i = 1/(s_i.y_i)
    # (0: an empty slot), the scale gamma of H_0, and whether the element stopped.
    def init(self, problem: InnerProblem, x: torch.Tensor) -> _Memory:
        if problem.objective is None:  # guarded by the entry points; for methods run directly
            raise TypeError("LBFGS.run: the problem has no objective; use it with fi.minimize.")
        g = problem.root(x)
        g_norm = torch.linalg.vector_norm(g)
        one = torch.ones_like(g_norm)
        gamma = torch.minimum(one, safe_div(one, g_norm))
        pairs = torch.zeros(self.memory, x.shape[0], dtype=x.dtype, device=x.device) * g_norm
        rho = torch.zeros(self.memory, dtype=x.dtype, device=x.device) * g_norm
        done = problem.finished(g_norm, x)
        return problem.objective(x), g, g_norm, pairs, pairs, rho, gamma, done

    def step(
        self, problem: InnerProblem, x: torch.Tensor, state: _Memory, iteration: int
    ) -> tuple[torch.Tensor, _Memory]:
        f, g, _, S, Y, rho, gamma, finished = state
        objective = problem.objective
        assert objective is not None  # checked by init
        k, m = iteration, self.memory
        was_empty = (rho == 0).all()
        # Two-loop recursion: d = -H g. Empty (or skipped) slots have rho = 0: no effect.
        q = g
        alphas = []
        for i in range(m):
            j = (k - 1 - i) % m
            a = rho[j] * _dot(S[j], q)
            q = q - a * Y[j]
            alphas.append((j, a))
        r = gamma * q
        for j, a in reversed(alphas):
            b = rho[j] * _dot(Y[j], r)
            r = r + (a - b) * S[j]
        d = -r
        slope = _dot(g, d)
        # H is positive definite by construction; rounding aside, d descends.
        descent = torch.isfinite(slope) & (slope < 0)
        d = torch.where(descent, d, -gamma * g)
        slope = torch.where(descent, slope, -gamma * _dot(g, g))

        x_new, f_new, accepted = armijo(
            objective, x, d, f, slope, self.max_backtracks, finished, self.check_every
        )
        g_new = problem.root(x_new)
        s, y = x_new - x, g_new - g
        sy, yy = _dot(s, y), _dot(y, y)
        tiny = torch.finfo(x.dtype).eps * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)
        usable = accepted & (sy > tiny)
        slot = torch.eye(m, dtype=x.dtype, device=x.device)[k % m]
        keep = (1 - slot * usable.to(x.dtype))[:, None]
        S = S * keep + (1 - keep) * s[None, :]
        Y = Y * keep + (1 - keep) * y[None, :]
        rho = rho * keep[:, 0] + (1 - keep[:, 0]) * safe_div(torch.ones_like(sy), sy)
        gamma = torch.where(usable, safe_div(sy, yy), gamma)
        # No decrease: forget the memory, restart from the scaled gradient; if the
        # memory was already empty (the step was along -gamma g), the element stalls.
        g_norm = torch.linalg.vector_norm(g_new)
        restart_gamma = torch.minimum(
            torch.ones_like(g_norm), safe_div(torch.ones_like(g_norm), g_norm)
        )
        rho = torch.where(accepted, rho, torch.zeros_like(rho))
        gamma = torch.where(accepted, gamma, restart_gamma)
        stalled = ~accepted & was_empty & ~finished
        done = problem.finished(g_norm, x_new) | stalled
        return x_new, (f_new, g_new, g_norm, S, Y, rho, gamma, done)

    def residual_norm(self, problem: InnerProblem, x: Any, state: _Memory) -> torch.Tensor:
        return state[2]

    def terminate(self, problem: InnerProblem, x: Any, state: _Memory) -> torch.Tensor:
        return state[7]  # converged, not finite, or stalled: decided by the step

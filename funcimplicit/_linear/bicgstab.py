"""BiCGStab: stabilized bi-conjugate gradients for square non-symmetric systems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._core import tree as _tree
from .._core.loop import iterate, safe_div
from .._core.result import LinearSolveResult, Status
from .base import (
    IterativeSolver,
    Operator,
    judged,
    start_residual,
)

__all__ = ["BiCGStab"]


@dataclass(frozen=True, kw_only=True)
class BiCGStab(IterativeSolver):
    """Stabilized bi-conjugate gradient for general square ``A`` (two matvecs per iteration).

    Right-preconditioned, so the residual it tracks is the true residual's recurrence.
    Breakdowns (``<r0, r> = 0`` or ``omega = 0``) stop the element and are reported.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(A @ fi.BiCGStab()(lambda v: A @ v, b), b)
        True
    """

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        x, r = start_residual(operator, b, init)
        r_hat = r  # the shadow residual, fixed
        rr = _tree.vdot(r, r)
        tol2 = tolerance * tolerance
        one = torch.ones_like(rr)
        zero_tree = _tree.zeros_like(b)

        def minus(a: Any, coeff: torch.Tensor, c: Any) -> Any:  # a - coeff * c
            return _tree.map_leaves(lambda ai, ci: torch.addcmul(ai, coeff, ci, value=-1), a, c)

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, v, rho, alpha, omega, _, _ = state
            rho_next = _tree.vdot(r_hat, r)
            # p <- r + beta (p - omega v), beta = (rho'/rho)(alpha/omega)
            beta = safe_div(rho_next, rho) * safe_div(alpha, omega)
            p = _tree.axpy(beta, minus(p, omega, v), r)
            p_hat = self._precondition(p)
            v = operator(p_hat)
            r_hat_v = _tree.vdot(r_hat, v)
            alpha = safe_div(rho_next, r_hat_v)
            s = minus(r, alpha, v)
            s_done = torch.logical_not(_tree.vdot(s, s) > tol2)  # converged at the half step
            s_hat = self._precondition(s)
            t = operator(s_hat)
            omega = safe_div(_tree.vdot(t, s), _tree.vdot(t, t)).masked_fill(s_done, 0)
            x = _tree.axpy(omega, s_hat, _tree.axpy(alpha, p_hat, x))
            r = minus(s, omega, t)
            rr = _tree.vdot(r, r)
            breakdown = (rho_next == 0) | (r_hat_v == 0) | ((omega == 0) & ~s_done)
            finished = torch.logical_not(rr > tol2) | breakdown
            return (x, r, p, v, rho_next, alpha, omega, rr, breakdown), finished

        done = torch.logical_not(rr > tol2)
        # The last slot is "broke down at the last step"; it starts as done, which only an
        # element done at the start (converged, or NaN: reported as such) can have.
        state = (x, r, zero_tree, zero_tree, one, one, one, rr, done)
        state, iterations, _ = iterate(step, state, done, self._maxiter(b), self.check_every)
        x, rr, breakdown = state[0], state[7], state[8]

        def failure() -> torch.Tensor:
            return torch.where(breakdown, int(Status.BREAKDOWN), int(Status.MAX_ITERATIONS))

        return judged(operator, b, x, iterations, rr, tolerance, failure)

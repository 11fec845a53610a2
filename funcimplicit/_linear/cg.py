"""Conjugate gradients for symmetric positive definite systems, with per-element stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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

__all__ = ["CG"]


@dataclass(frozen=True, kw_only=True)
class CG(IterativeSolver):
    """Conjugate gradient for symmetric positive definite ``A`` (e.g. a Hessian).

    Stops when ``||r|| <= max(rtol * ||b||, atol)``. It then checks the true residual
    ``b - A x`` once, so a non-symmetric or indefinite ``A`` is reported as a failure
    instead of returning a wrong answer silently.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x = fi.CG()(lambda v: A @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> torch.allclose(A @ x, torch.tensor([1.0, 2.0], dtype=torch.float64))
        True
    """

    requires_symmetric: ClassVar[bool] = True

    @property
    def failure_hint(self) -> str:
        return (
            "CG needs a symmetric positive definite operator: for a non-symmetric one use "
            "GMRES or BiCGStab; otherwise raise maxiter, add a preconditioner or ridge."
        )

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        x, r = start_residual(operator, b, init)
        preconditioned = self.preconditioner is not None
        z = self._precondition(r)
        rz = _tree.vdot(r, z)
        rr = _tree.vdot(r, r) if preconditioned else rz
        tol2 = tolerance * tolerance

        # x += alpha p, r -= alpha A p with alpha = <r, z> / <p, A p>;
        # p <- z + beta p with beta = <r', z'> / <r, z>   (z = M r, M the preconditioner).
        # Stop when ||r||^2 <= tol^2, or NaN (the negated ">" is true for NaN), or
        # p^T A p <= 0: A is not positive definite along p (status INDEFINITE unless converged).
        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, rz, _, _ = state
            ap = operator(p)
            p_ap = _tree.vdot(p, ap)
            alpha = safe_div(rz, p_ap)
            x = _tree.axpy(alpha, p, x)
            r = _tree.map_leaves(lambda ri, api: torch.addcmul(ri, alpha, api, value=-1), r, ap)
            z = self._precondition(r)
            rz_next = _tree.vdot(r, z)
            rr = _tree.vdot(r, r) if preconditioned else rz_next
            p = _tree.axpy(safe_div(rz_next, rz), p, z)
            indefinite = p_ap <= 0
            finished = torch.logical_not(rr > tol2) | indefinite
            return (x, r, p, rz_next, rr, indefinite), finished

        done = torch.logical_not(rr > tol2)
        # The last slot is "p^T A p <= 0 at the last step"; it starts as done, which only an
        # element done at the start (converged, or NaN: reported as such) can have.
        state = (x, r, z, rz, rr, done)
        state, iterations, _ = iterate(step, state, done, self._maxiter(b), self.check_every)
        x, rr, indefinite = state[0], state[4], state[5]

        def failure() -> torch.Tensor:
            return torch.where(indefinite, int(Status.INDEFINITE), int(Status.MAX_ITERATIONS))

        return judged(operator, b, x, iterations, rr, tolerance, failure)

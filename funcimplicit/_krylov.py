"""Iterative linear solvers with per-element stopping: CG, NormalCG, BiCGStab, Neumann."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import _func, _tree
from ._checks import check_same_layout, floating_leaves
from ._convergence import LinearSolveResult
from ._loop import iterate, safe_div
from ._solver_base import (
    IterativeSolver,
    Operator,
    default_rtol,
    finish,
    non_finite_visible,
    rounding_slack,
)
from ._tree import TreeT

__all__ = ["CG", "BiCGStab", "Neumann", "NormalCG"]


def _start(operator: Operator, b: TreeT, init: TreeT | None) -> tuple[TreeT, TreeT]:
    """Initial ``x`` and residual ``b - A x`` (no matvec when starting from zero)."""
    if init is None:
        return _tree.zeros_like(b), b
    return init, _tree.sub(b, operator(init))


def _judged(
    operator: Operator,
    b: Any,
    x: Any,
    iterations: torch.Tensor,
    recurrence_rr: torch.Tensor,
    tolerance: torch.Tensor,
) -> LinearSolveResult[Any]:
    """The result of a recurrence method, judged by one true residual ``||b - A x||``."""
    true_norm = _tree.norm(_tree.sub(b, operator(x)))
    claimed = recurrence_rr <= tolerance * tolerance
    return finish(x, iterations, true_norm, tolerance, claimed=claimed, slack=rounding_slack(b))


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

    def _solve(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        x, r = _start(operator, b, init)
        preconditioned = self.preconditioner is not None
        z = self._precondition(r)
        rz = _tree.vdot(r, z)
        rr = _tree.vdot(r, r) if preconditioned else rz
        tol2 = tolerance * tolerance

        # x += alpha p, r -= alpha A p with alpha = <r, z> / <p, A p>;
        # p <- z + beta p with beta = <r', z'> / <r, z>   (z = M r, M the preconditioner).
        # Stop when ||r||^2 <= tol^2, or NaN (the negated ">" is true for NaN), or
        # p^T A p <= 0: A is not positive definite along p (reported by the final check).
        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, rz, _ = state
            ap = operator(p)
            p_ap = _tree.vdot(p, ap)
            alpha = safe_div(rz, p_ap)
            x = _tree.axpy(alpha, p, x)
            r = _tree.map_leaves(lambda ri, api: torch.addcmul(ri, alpha, api, value=-1), r, ap)
            z = self._precondition(r)
            rz_next = _tree.vdot(r, z)
            rr = _tree.vdot(r, r) if preconditioned else rz_next
            p = _tree.axpy(safe_div(rz_next, rz), p, z)
            finished = torch.logical_not(rr > tol2) | (p_ap <= 0)
            return (x, r, p, rz_next, rr), finished

        state = (x, r, z, rz, rr)
        done = torch.logical_not(rr > tol2)
        state, iterations, _ = iterate(step, state, done, self._maxiter(b), self.check_every)
        return _judged(operator, b, state[0], iterations, state[-1], tolerance)


@dataclass(frozen=True, kw_only=True)
class NormalCG(IterativeSolver):
    """CG on the normal equations ``(A^T A + ridge I) x = A^T b`` (any ``A``, also non-square).

    ``A^T`` comes from ``torch.func.vjp`` of ``matvec``. The tolerance applies to the normal
    residual ``A^T b - (A^T A + ridge I) x`` relative to ``||A^T b||``. Squaring the
    condition number costs digits in low precision: prefer GMRES or BiCGStab for square
    non-symmetric systems. For a non-square ``A`` pass ``init`` to fix the shape of ``x``.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> x = fi.NormalCG()(lambda v: A @ v, b, init=torch.zeros(2, dtype=torch.float64))
        >>> torch.allclose(x, torch.linalg.lstsq(A, b[:, None]).solution[:, 0])
        True
    """

    applies_operator_only: ClassVar[bool] = False  # A^T comes from a VJP of the operator

    def run(
        self, matvec: Callable[[Any], Any], b: Any, init: Any | None = None
    ) -> LinearSolveResult[Any]:
        call = f"{type(self).__name__}.run(matvec, b)"
        b_leaves, _ = floating_leaves(b, call, "b")
        if init is None:
            x_like = _tree.zeros_like(b)
        else:
            floating_leaves(init, call, "init")
            x_like = _tree.zeros_like(init)
        try:
            ax, transpose = _func.vjp(matvec, x_like)
        except Exception as error:
            if init is None:
                raise ValueError(
                    f"{call}: could not apply matvec to a zero tree shaped like b ({error}). "
                    "For a non-square operator pass init with the shape of the solution x."
                ) from error
            raise
        check_same_layout(ax, b, call, "matvec(x)")
        ridge = self.ridge

        # The normal operator v -> A^T A v + ridge v is symmetric positive (semi)definite.
        def normal(v: Any) -> Any:
            out = transpose(matvec(v))[0]
            return _tree.axpy(ridge, v, out) if ridge else out

        rhs = transpose(b)[0]
        rtol = default_rtol(b_leaves[0].dtype) if self.rtol is None else self.rtol
        tolerance = torch.clamp(rtol * _tree.norm(rhs), min=self.atol)
        inner = CG(
            maxiter=self.maxiter,
            preconditioner=self.preconditioner,
            check_every=self.check_every,
        )
        start = None if init is None else _tree.map_leaves(torch.clone, init)
        return non_finite_visible(inner._solve(normal, rhs, start, tolerance), _tree.norm(b))


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

    def _solve(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        x, r = _start(operator, b, init)
        r_hat = r  # the shadow residual, fixed
        rr = _tree.vdot(r, r)
        tol2 = tolerance * tolerance
        one = torch.ones_like(rr)
        zero_tree = _tree.zeros_like(b)

        def minus(a: Any, coeff: torch.Tensor, c: Any) -> Any:  # a - coeff * c
            return _tree.map_leaves(lambda ai, ci: torch.addcmul(ai, coeff, ci, value=-1), a, c)

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, v, rho, alpha, omega, _ = state
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
            return (x, r, p, v, rho_next, alpha, omega, rr), finished

        state = (x, r, zero_tree, zero_tree, one, one, one, rr)
        done = torch.logical_not(rr > tol2)
        state, iterations, _ = iterate(step, state, done, self._maxiter(b), self.check_every)
        return _judged(operator, b, state[0], iterations, state[-1], tolerance)


@dataclass(frozen=True, kw_only=True)
class Neumann(IterativeSolver):
    """Neumann series ``x = sum_k (I - A)^k b``: Richardson iteration ``x <- x + M (b - A x)``.

    Converges when the spectral radius of ``I - M A`` is below 1, e.g. ``A = I - J`` for a
    contractive fixed-point map with Jacobian ``J``. One matvec per iteration, no inner
    products besides the residual norm. The residual checked is the true one.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> J = torch.tensor([[0.2, 0.1], [0.0, 0.3]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> x = fi.Neumann()(lambda v: v - J @ v, b)
        >>> torch.allclose(x - J @ x, b)
        True
    """

    @property
    def failure_hint(self) -> str:
        return (
            "Neumann converges only when the spectral radius of I - A is below 1; "
            "use GMRES or BiCGStab otherwise, or raise maxiter."
        )

    def _solve(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        x, r = _start(operator, b, init)
        rr = _tree.vdot(r, r)
        tol2 = tolerance * tolerance

        # x <- x + M r, r = b - A x  (stop on ||r||^2 <= tol^2 or NaN)
        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, _ = state
            x = _tree.add(x, self._precondition(r))
            r = _tree.sub(b, operator(x))
            rr = _tree.vdot(r, r)
            return (x, r, rr), torch.logical_not(rr > tol2)

        done = torch.logical_not(rr > tol2)
        state, iterations, _ = iterate(step, (x, r, rr), done, self._maxiter(b), self.check_every)
        x, _, rr = state
        return finish(x, iterations, torch.sqrt(rr), tolerance)

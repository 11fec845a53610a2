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
from ._solver_base import IterativeSolver, Operator, default_rtol, finish, rounding_slack
from ._tree import TreeT

__all__ = ["CG", "BiCGStab", "Neumann", "NormalCG"]


def _start(operator: Operator, b: TreeT, init: TreeT | None) -> tuple[TreeT, TreeT]:
    """Initial ``x`` and residual ``b - A x`` (no matvec when starting from zero)."""
    if init is None:
        return _tree.zeros_like(b), b
    return init, _tree.sub(b, operator(init))


def _finished(residual_norm: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
    return (residual_norm <= tolerance) | ~torch.isfinite(residual_norm)


@dataclass(frozen=True, kw_only=True)
class CG(IterativeSolver):
    """Conjugate gradient for symmetric positive definite ``A`` (e.g. a Hessian).

    Stops when ``||r|| <= max(rtol * ||b||, atol)``. It then checks the true residual
    ``b - A x`` once, so a non-symmetric or indefinite ``A`` is reported as a failure
    instead of returning a wrong answer silently.

    Example:
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
        z = self._precondition(r)
        rz = _tree.vdot(r, z)
        r_norm = _tree.norm(r)

        # x += alpha p, r -= alpha A p with alpha = <r, z> / <p, A p>;
        # p <- z + beta p with beta = <r', z'> / <r, z>   (z = M r, M the preconditioner).
        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, rz, _ = state
            ap = operator(p)
            p_ap = _tree.vdot(p, ap)
            alpha = safe_div(rz, p_ap)
            x = _tree.axpy(alpha, p, x)
            r = _tree.axpy(-alpha, ap, r)
            z = self._precondition(r)
            rz_next = _tree.vdot(r, z)
            p = _tree.axpy(safe_div(rz_next, rz), p, z)
            r_norm = _tree.norm(r)
            # p^T A p <= 0 means A is not positive definite along p: stop, report failure.
            return (x, r, p, rz_next, r_norm), _finished(r_norm, tolerance) | (p_ap <= 0)

        state = (x, r, z, rz, r_norm)
        state, iterations, _ = iterate(step, state, _finished(r_norm, tolerance), self._maxiter(b))
        x, _, _, _, r_norm = state
        true_norm = _tree.norm(_tree.sub(b, operator(x)))
        return finish(
            x,
            iterations,
            true_norm,
            tolerance,
            claimed=r_norm <= tolerance,
            slack=rounding_slack(b),
        )


@dataclass(frozen=True, kw_only=True)
class NormalCG(IterativeSolver):
    """CG on the normal equations ``(A^T A + ridge I) x = A^T b`` (any ``A``, also non-square).

    ``A^T`` comes from ``torch.func.vjp`` of ``matvec``. The tolerance applies to the normal
    residual ``A^T b - (A^T A + ridge I) x`` relative to ``||A^T b||``. Squaring the
    condition number costs digits in low precision: prefer GMRES or BiCGStab for square
    non-symmetric systems. For a non-square ``A`` pass ``init`` to fix the shape of ``x``.

    Example:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> x = fi.NormalCG()(lambda v: A @ v, b, init=torch.zeros(2, dtype=torch.float64))
        >>> torch.allclose(x, torch.linalg.lstsq(A, b[:, None]).solution[:, 0])
        True
    """

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
        inner = CG(maxiter=self.maxiter, preconditioner=self.preconditioner)
        start = None if init is None else _tree.map_leaves(torch.clone, init)
        return inner._solve(normal, rhs, start, tolerance)


@dataclass(frozen=True, kw_only=True)
class BiCGStab(IterativeSolver):
    """Stabilized bi-conjugate gradient for general square ``A`` (two matvecs per iteration).

    Right-preconditioned, so the residual it tracks is the true residual's recurrence.
    Breakdowns (``<r0, r> = 0`` or ``omega = 0``) stop the element and are reported.

    Example:
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
        r_norm = _tree.norm(r)
        one = torch.ones_like(r_norm)
        zero_tree = _tree.zeros_like(b)

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, v, rho, alpha, omega, _ = state
            rho_next = _tree.vdot(r_hat, r)
            # p <- r + beta (p - omega v), beta = (rho'/rho)(alpha/omega)
            beta = safe_div(rho_next, rho) * safe_div(alpha, omega)
            p = _tree.add(r, _tree.scale(beta, _tree.axpy(-omega, v, p)))
            p_hat = self._precondition(p)
            v = operator(p_hat)
            r_hat_v = _tree.vdot(r_hat, v)
            alpha = safe_div(rho_next, r_hat_v)
            s = _tree.axpy(-alpha, v, r)
            s_done = _tree.norm(s) <= tolerance  # half step already converged: omega = 0
            s_hat = self._precondition(s)
            t = operator(s_hat)
            omega = torch.where(s_done, 0.0, safe_div(_tree.vdot(t, s), _tree.vdot(t, t)))
            x = _tree.axpy(omega, s_hat, _tree.axpy(alpha, p_hat, x))
            r = _tree.axpy(-omega, t, s)
            r_norm = _tree.norm(r)
            breakdown = (rho_next == 0) | (r_hat_v == 0) | ((omega == 0) & ~s_done)
            finished = _finished(r_norm, tolerance) | breakdown
            return (x, r, p, v, rho_next, alpha, omega, r_norm), finished

        state = (x, r, zero_tree, zero_tree, one, one, one, r_norm)
        state, iterations, _ = iterate(step, state, _finished(r_norm, tolerance), self._maxiter(b))
        x, r_norm = state[0], state[-1]
        true_norm = _tree.norm(_tree.sub(b, operator(x)))
        return finish(
            x,
            iterations,
            true_norm,
            tolerance,
            claimed=r_norm <= tolerance,
            slack=rounding_slack(b),
        )


@dataclass(frozen=True, kw_only=True)
class Neumann(IterativeSolver):
    """Neumann series ``x = sum_k (I - A)^k b``: Richardson iteration ``x <- x + M (b - A x)``.

    Converges when the spectral radius of ``I - M A`` is below 1, e.g. ``A = I - J`` for a
    contractive fixed-point map with Jacobian ``J``. One matvec per iteration, no inner
    products besides the residual norm. The residual checked is the true one.

    Example:
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
        r_norm = _tree.norm(r)

        # x <- x + M r, r = b - A x
        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, _ = state
            x = _tree.add(x, self._precondition(r))
            r = _tree.sub(b, operator(x))
            r_norm = _tree.norm(r)
            return (x, r, r_norm), _finished(r_norm, tolerance)

        state, iterations, _ = iterate(
            step, (x, r, r_norm), _finished(r_norm, tolerance), self._maxiter(b)
        )
        x, _, r_norm = state
        return finish(x, iterations, r_norm, tolerance)

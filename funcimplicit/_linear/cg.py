"""Conjugate gradients for symmetric positive definite systems, with per-element stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import loop as _loop
from .._core import tree as _tree
from .._core.compat import physical
from .._core.loop import iterate
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
        # Comparisons against a tensor zero, made once: a Python 0 is wrapped into a fresh
        # tensor and cast at every comparison (three more dispatched ops each).
        zero, one = torch.zeros_like(rz), torch.ones_like(rz)

        # x += alpha p, r -= alpha A p with alpha = <r, z> / <p, A p>;
        # p <- z + beta p with beta = <r', z'> / <r, z>   (z = M r, M the preconditioner).
        # A zero denominator is replaced by 1 (0 / 0 gives 0, never NaN).
        # Stop when ||r||^2 <= tol^2, or NaN (the negated ">" is true for NaN), or
        # p^T A p <= 0: A is not positive definite along p; the last p^T A p is kept in the
        # state, and read once at the end for the status (INDEFINITE unless converged).
        def tree_step(state: Any) -> tuple[Any, torch.Tensor]:
            x, r, p, rz, _, _ = state
            ap = operator(p)
            p_ap = _tree.vdot(p, ap)
            alpha = rz / torch.where(p_ap == zero, one, p_ap)
            x = _tree.axpy(alpha, p, x)
            r = _tree.map_leaves(lambda ri, api: torch.addcmul(ri, alpha, api, value=-1), r, ap)
            z = self._precondition(r)
            rz_next = _tree.vdot(r, z)
            rr = _tree.vdot(r, r) if preconditioned else rz_next
            p = _tree.axpy(rz_next / torch.where(rz == zero, one, rz), p, z)
            finished = torch.logical_not((rr > tol2) & (p_ap > zero))
            return (x, r, p, rz_next, rr, p_ap), finished

        done = torch.logical_not(rr > tol2)
        # The last slot is p^T A p of the last step; it starts at 0 ("indefinite") only for an
        # element done at the start (converged, or NaN: reported as such).
        state: tuple[Any, ...] = (x, r, z, rz, rr, torch.logical_not(done).to(rz.dtype))
        maxiter = self._maxiter(b)
        if (
            isinstance(b, torch.Tensor)
            and not preconditioned
            and self.check_every == 1
            and physical(b) is b
        ):
            state, count, handover = _plain_loop(operator, state, tol2, zero, one, maxiter)
            iterations = torch.tensor(count, dtype=torch.int64, device=rr.device)
            if handover is not None:  # the matvec is batched (vmap over A): per element
                state, more, _ = iterate(tree_step, state, handover, maxiter - count, 1)
                iterations = iterations + more
        else:
            state, iterations, _ = iterate(tree_step, state, done, maxiter, self.check_every)
        x, rr, p_ap = state[0], state[4], state[5]

        def failure() -> torch.Tensor:
            indefinite = torch.logical_not(p_ap > zero)
            return torch.where(indefinite, int(Status.INDEFINITE), int(Status.MAX_ITERATIONS))

        return judged(operator, b, x, iterations, rr, tolerance, failure)


def _plain_loop(
    operator: Operator,
    state: tuple[torch.Tensor, ...],
    tol2: torch.Tensor,
    zero: torch.Tensor,
    one: torch.Tensor,
    maxiter: int,
) -> tuple[tuple[torch.Tensor, ...], int, torch.Tensor | None]:
    """CG on one plain tensor (no ``vmap``, no compile, no preconditioner), its flag read each step.

    The step of ``CG.compute`` with the same operations in the same order (bit-identical),
    without pytree dispatch or freezing: one problem stops when its own flag says so (one host
    read per step), so the division guards, identities on every step that goes on, are left
    out: an executed step has ``||r||^2 > tol^2 >= 0``, and a last step with
    ``p^T A p <= 0`` is redone guarded.

    Returns:
        ``(state, steps, None)``; or, if the first product comes back batched (a matvec
        closing over a ``vmap``-ed ``A``), ``(state, 1, finished)`` after that step, for the
        per-element loop to go on from.
    """
    x, r, p, rr, _, p_ap = state
    if not bool(rr > tol2):
        return state, 0, None
    tol2_f = float(tol2)  # exact: the comparisons below match the tensor ones bit for bit
    count = 0
    while count < maxiter:
        ap = operator(p)
        p_ap = torch.sum(p * ap)
        # unguarded: the guard (p^T A p == 0 -> 1) is an identity where the step goes on
        alpha = rr / p_ap
        x_next = torch.addcmul(x, alpha, p)
        r_next = torch.addcmul(r, alpha, ap, value=-1)
        rr_next = torch.sum(r_next * r_next)
        flags = torch.stack((rr_next, p_ap))
        if count == 0 and physical(flags) is not flags:
            return _plain_handover(x, r, p, rr, ap, p_ap, tol2, zero, one)
        count += 1
        # the one host read of the step (through the loop's reader, like every loop's reads)
        read = _loop.physical(flags)
        assert read is not None  # a plain tensor, outside compile
        rr_f, p_ap_f = read.tolist()
        if not (rr_f > tol2_f and p_ap_f > 0):  # (NaN compares false: stops)
            if not p_ap_f > 0:  # not positive definite along p (or NaN): guarded
                alpha = rr / torch.where(p_ap == zero, one, p_ap)
                x_next = torch.addcmul(x, alpha, p)
                r_next = torch.addcmul(r, alpha, ap, value=-1)
                rr_next = torch.sum(r_next * r_next)
            x, r, rr = x_next, r_next, rr_next
            break
        p = torch.addcmul(r_next, rr_next / rr, p)
        x, r, rr = x_next, r_next, rr_next
    return (x, r, p, rr, rr, p_ap), count, None


def _plain_handover(
    x: torch.Tensor,
    r: torch.Tensor,
    p: torch.Tensor,
    rr: torch.Tensor,
    ap: torch.Tensor,
    p_ap: torch.Tensor,
    tol2: torch.Tensor,
    zero: torch.Tensor,
    one: torch.Tensor,
) -> tuple[tuple[torch.Tensor, ...], int, torch.Tensor]:
    """The first step of ``CG.compute``'s per-element loop, from a product that came batched."""
    alpha = rr / torch.where(p_ap == zero, one, p_ap)
    x = torch.addcmul(x, alpha, p)
    r = torch.addcmul(r, alpha, ap, value=-1)
    rr_next = torch.sum(r * r)
    p = torch.addcmul(r, rr_next / rr, p)
    finished = torch.logical_not((rr_next > tol2) & (p_ap > zero))
    return (x, r, p, rr_next, rr_next, p_ap), 1, finished

"""Restarted GMRES with per-element stopping, vectorized so it runs under ``vmap``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch

from .._core import loop as _loop
from .._core import tree as _tree
from .._core.checks import may_mutate
from .._core.compat import physical
from .._core.loop import ALL_DONE, NONE_DONE, UNKNOWN, checked, progress, safe_div, safe_sqrt
from .._core.result import LinearSolveResult, Status
from .._core.tree import TreeT
from .base import IterativeSolver, Operator, rounding_slack

__all__ = ["GMRES"]


def _sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum`` without the leading ``0 +`` (one op fewer per call)."""
    iterator = iter(terms)
    total = next(iterator)
    for term in iterator:
        total = total + term
    return total


@dataclass(frozen=True, kw_only=True)
class GMRES(IterativeSolver):
    """Restarted GMRES(``restart``) for general square ``A``, right-preconditioned.

    Each cycle builds an orthonormal Krylov basis (classical Gram-Schmidt applied twice, as
    matrix products over the stacked basis) and minimizes the residual over it with Givens
    rotations. A cycle ends early once the residual estimate meets the tolerance; every
    restart recomputes the true residual. ``maxiter`` counts Arnoldi steps (one matvec each);
    at most ``ceil(maxiter / restart)`` cycles run. ``check_every`` counts Arnoldi steps
    within a cycle; the per-cycle reads (restart, stagnation) happen when ``check_every`` is
    not ``None``. With ``check_every=1`` on one plain tensor that nothing differentiates (no
    ``vmap``, autograd or compile), each step reads its Hessenberg column once and the
    rotations run on the host in float64: the same method with a few dispatched ops per step.
    A pivot of the small triangular system that vanished to rounding (a singular ``A``)
    leaves its direction out of the update.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(A @ fi.GMRES()(lambda v: A @ v, b), b)
        True
    """

    restart: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.restart, bool) or not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(f"GMRES: restart must be a positive int; received {self.restart!r}.")

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        maxiter = self._maxiter(b)
        m = min(self.restart, _tree.size(b), maxiter)
        slack = rounding_slack(b)
        x = _tree.zeros_like(b) if init is None else init
        beta = _tree.norm(b)
        iterations = torch.zeros_like(beta, dtype=torch.int64)
        claimed = torch.zeros_like(beta, dtype=torch.bool)
        cycles = math.ceil(maxiter / m) + 1
        converged = torch.zeros_like(beta, dtype=torch.bool)
        stagnated = torch.zeros_like(beta, dtype=torch.bool)
        ran = stagnated  # elements that ran the last cycle
        x_before, beta_before = x, beta
        # Restarted GMRES never increases the residual (each cycle minimizes it over a space
        # that contains the zero step); a cycle that lowered it by less than this fraction is
        # no progress: a singular or inconsistent system, or complete stagnation of GMRES(m).
        least = 1 - math.sqrt(torch.finfo(beta.dtype).eps)
        for cycle in range(cycles):
            r = b if (cycle == 0 and init is None) else _tree.sub(b, operator(x))
            beta = _tree.norm(r)
            # Accept the true residual; after a cycle whose estimate met the tolerance, allow
            # the rounding drift between estimate and true residual.
            converged = (beta <= tolerance) | (claimed & (beta <= tolerance + slack))
            if cycle > 0:
                open_ = ran & ~converged & torch.isfinite(beta)
                # rounding (e.g. after a breakdown) made it worse: keep the previous x
                worse = open_ & (beta > beta_before)
                if (progress(worse) if self.check_every else UNKNOWN) != NONE_DONE:
                    x = _tree.where(worse, x_before, x)
                    beta = torch.where(worse, beta_before, beta)
                stagnated = stagnated | (open_ & torch.logical_not(beta < least * beta_before))
            done = converged | stagnated | ~torch.isfinite(beta) | (iterations >= maxiter)
            if cycle == cycles - 1 or (self.check_every and progress(done) == ALL_DONE):
                break
            ran, x_before, beta_before = ~done, x, beta
            x, iterations, claimed = self._cycle(
                operator, r, beta, x, done, iterations, tolerance, m, maxiter
            )
        converged = converged & torch.isfinite(beta)
        reason = None
        if progress(converged) != ALL_DONE:
            reason = torch.where(stagnated, int(Status.STAGNATION), int(Status.MAX_ITERATIONS))
        return LinearSolveResult(x, iterations, beta, tolerance, converged, reason)

    def _cycle(
        self,
        operator: Operator,
        r: TreeT,
        beta: torch.Tensor,
        x: TreeT,
        done: torch.Tensor,
        iterations: torch.Tensor,
        tolerance: torch.Tensor,
        m: int,
        maxiter: int,
    ) -> tuple[TreeT, torch.Tensor, torch.Tensor]:
        first: Any = None  # the first product A M v_0, when computed to choose the path
        if (
            isinstance(r, torch.Tensor)
            and isinstance(x, torch.Tensor)
            and self.check_every == 1
            and physical(beta) is beta
        ):
            v_first = (safe_div(torch.ones_like(beta), beta) * r.reshape(-1)).reshape(r.shape)
            product: torch.Tensor = self._product(operator, v_first)
            if physical(product) is product and may_mutate(beta, product):
                out = self._host_cycle(
                    operator, r, beta, x, product, iterations, tolerance, m, maxiter
                )
                return cast(tuple[TreeT, torch.Tensor, torch.Tensor], out)
            first = product
        leaves, spec = _tree.flatten(r)
        shapes = [leaf.shape for leaf in leaves]
        dtype = beta.dtype
        eye = torch.eye(m + 1, dtype=dtype, device=beta.device)
        # the Givens rotation of step j is eye + (c - 1) pairs[j] + s swaps[j]
        pairs = torch.diag_embed(eye[:-1] + eye[1:]).unbind(0)
        corner = torch.einsum("ji,jk->jik", eye[:-1], eye[1:])
        swaps = (corner - corner.mT).unbind(0)
        rows = eye.unbind(0)
        columns = eye.unsqueeze(-1).unbind(0)  # e_k as an (m + 1, 1) column
        # basis[k] holds the k-th Krylov vector's leaf, flattened: shape (m + 1, leaf.numel())
        v0 = [safe_div(torch.ones_like(beta), beta) * leaf.reshape(-1) for leaf in leaves]
        basis = [eye[0][:, None] * v[None, :] for v in v0]
        rotations = eye  # Q^T: the product of the Givens rotations so far
        # R (batched like beta)
        upper = torch.zeros(m + 1, m, dtype=dtype, device=beta.device) * beta
        g = beta * eye[0]  # Q^T (beta e_0); |g[j + 1]| is the residual estimate after step j
        steps = torch.zeros_like(iterations)
        breakdown = 10 * torch.finfo(dtype).eps
        scales = upper[0]  # ||A M v_j|| per column j: what a pivot of R is small against
        mutable: bool | None = None  # decided at the first matvec of the cycle
        inner_done = done | (iterations >= maxiter)
        for j in range(m):
            status = progress(inner_done) if checked(j, self.check_every) else UNKNOWN
            if status == ALL_DONE:
                break
            active = ~inner_done
            # Arnoldi: w = A M v_j, orthogonalized twice against v_0..v_j (zeros beyond).
            v_j = _tree.unflatten(
                spec, [q[j].reshape(s) for q, s in zip(basis, shapes, strict=True)]
            )
            product = first if j == 0 and first is not None else self._product(operator, v_j)
            w = [leaf.reshape(-1) for leaf in _tree.flatten(product)[0]]
            av_norm = safe_sqrt(_sum(torch.sum(wl * wl) for wl in w))
            scales = torch.addcmul(scales, av_norm, rows[j][:m])
            h: torch.Tensor | None = None
            # against the rows built so far only (the rest are zero)
            built = [q[: j + 1] for q in basis]
            for _ in range(2):
                coeffs = _sum(q @ wl for q, wl in zip(built, w, strict=True))
                w = [wl - coeffs @ q for q, wl in zip(built, w, strict=True)]
                h = coeffs if h is None else h + coeffs
            w_norm = safe_sqrt(_sum(torch.sum(wl * wl) for wl in w))
            # Breakdown: A M v_j lies in the basis up to rounding (the Krylov space is
            # invariant). The rest of w is noise: add no basis vector, end this cycle.
            broke = w_norm <= breakdown * av_norm
            w_norm = w_norm.masked_fill(broke, 0)
            assert h is not None
            h = (
                torch.cat([h, w_norm[None], h.new_zeros(m - j - 1)])
                if j + 1 < m
                else torch.cat([h, w_norm[None]])
            )
            scale = safe_div(torch.ones_like(w_norm), w_norm).masked_fill(broke, 0)
            if status != NONE_DONE:
                scale = scale.masked_fill(~active, 0)  # frozen elements add no basis vector
            new_rows = [scale * wl for wl in w]
            if mutable is None:
                mutable = may_mutate(beta, *w)
                if mutable:  # one out-of-place pass: batch the buffer like the rows it gets
                    basis = [
                        q + torch.zeros_like(row) for q, row in zip(basis, new_rows, strict=True)
                    ]
            if mutable:  # write row j + 1 in place: no fresh (m + 1) x n buffer per step
                for q, row in zip(basis, new_rows, strict=True):
                    q[j + 1].copy_(row)
            else:
                basis = [
                    torch.addcmul(q, columns[j + 1], row)
                    for q, row in zip(basis, new_rows, strict=True)
                ]
            # Givens rotation G zeroing entry j + 1 of the rotated column u = Q^T h:
            # G acts on rows (j, j+1) as [[c, s], [-s, c]], c = u_j / rho, s = u_{j+1} / rho.
            u = rotations @ h
            u_j, u_next = u[j], u[j + 1]
            rho = safe_sqrt(u_j * u_j + u_next * u_next)
            vanished = rho == 0
            safe_rho = rho.masked_fill(vanished, 1)
            c = (u_j / safe_rho).masked_fill(vanished, 1)
            s = u_next / safe_rho
            givens = torch.addcmul(torch.addcmul(eye, c - 1, pairs[j]), s, swaps[j])
            new_upper = torch.addcmul(upper, (givens @ u)[:, None], rows[j][:m])
            new_rotations = givens @ rotations
            new_g = givens @ g
            if status == NONE_DONE:
                upper, rotations, g = new_upper, new_rotations, new_g
                steps = steps + 1
            else:
                upper = torch.where(active, new_upper, upper)
                rotations = torch.where(active, new_rotations, rotations)
                g = torch.where(active, new_g, g)
                steps = steps + active.to(torch.int64)
            # stop on a met (or NaN) estimate, or the iteration budget
            met = torch.logical_not(torch.abs(g[j + 1]) > tolerance)
            inner_done = inner_done | met | broke | (iterations + steps >= maxiter)
        # Minimize ||beta e_0 - H y|| over the steps taken: R y = g on the used columns. An
        # unused column, or one whose pivot vanished to rounding (|R_jj| <= 10 eps ||A M v_j||:
        # A M v_j lies in the span of the earlier vectors, a singular A), gets the row e_j and
        # a zero right-hand side, so its y is 0: that direction is left out, not blown up.
        used = torch.arange(m, device=beta.device) < steps
        diag = torch.diagonal(upper[:m])
        fix = (~used) | torch.logical_not(torch.abs(diag) > breakdown * scales)
        square = torch.where(fix[:, None], eye[:m, :m], upper[:m])
        y = torch.linalg.solve_triangular(
            square, torch.where(fix, 0.0, g[:m])[:, None], upper=True
        )[:, 0]
        dx = _tree.unflatten(
            spec, [(y @ q[:m]).reshape(s) for q, s in zip(basis, shapes, strict=True)]
        )
        x = _tree.where(done, x, _tree.add(x, self._precondition(dx)))
        claimed = torch.abs(g.gather(0, steps.clamp_min(0).reshape(1))[0]) <= tolerance
        return x, iterations + steps, claimed

    def _product(self, operator: Operator, v: Any) -> Any:
        """``A M v``."""
        return operator(self._precondition(v))

    def _host_cycle(
        self,
        operator: Operator,
        r: torch.Tensor,
        beta: torch.Tensor,
        x: torch.Tensor,
        first: torch.Tensor,
        iterations: torch.Tensor,
        tolerance: torch.Tensor,
        m: int,
        maxiter: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One cycle of :meth:`_cycle` for one plain tensor that nothing differentiates.

        The same method, with the small problem on the host: the Arnoldi vectors stay
        tensors (one row of a preallocated basis each, written in place), while each new
        Hessenberg column (``j + 2`` numbers) is read once and rotated, and the triangular
        system solved, in Python floats. A step then dispatches a few tensor ops besides its
        product, where the batched cycle keeps every scalar as a tensor (needed under
        ``vmap``, compile or autograd). The stopping test reads the same residual estimate.
        """
        n = r.numel()
        dtype, device = r.dtype, r.device
        breakdown = 10 * torch.finfo(dtype).eps
        tol = float(tolerance)
        beta_f = float(beta)
        budget = maxiter - int(iterations)
        basis = torch.zeros(m + 1, n, dtype=dtype, device=device)
        torch.mul(r.reshape(-1), 1.0 / beta_f if beta_f != 0 else 1.0, out=basis[0])
        basis_t = basis.mT
        rows = basis.unbind(0)  # views of the basis rows (no indexing op per step)
        # Givens rotations so far, (c_i, s_i); R's columns; g = Q^T (beta e_0)
        rotations: list[tuple[float, float]] = []
        upper: list[list[float]] = []
        scales: list[float] = []  # ||A M v_j|| per column
        g = [beta_f] + [0.0] * m
        steps = 0
        flat = r.dim() == 1
        w = first if flat else first.reshape(-1)
        for j in range(m):
            if j > 0:
                v_j = rows[j] if flat else rows[j].view(r.shape)
                w = self._product(operator, v_j)
                w = w if flat else w.reshape(-1)
            # Arnoldi: w orthogonalized twice (classical Gram-Schmidt as products with the
            # whole basis; rows beyond j are zero and add exact zeros):
            # h = V w + V (w - V^T V w), w <- w - V^T h.
            h1 = torch.mv(basis, w)
            h_t = torch.addmv(h1, basis, torch.addmv(w, basis_t, h1, alpha=-1))
            w = torch.addmv(w, basis_t, h_t, alpha=-1)
            w_norm = torch.linalg.vector_norm(w)
            # the step's host read (through the loop's reader, like every loop's reads)
            read = _loop.physical(h_t)
            assert read is not None  # a plain tensor, outside compile
            h, w_norm_f = read.tolist()[: j + 1], float(w_norm)
            # ||A M v_j|| = ||(h, w_norm)|| (orthonormal basis), only a scale for thresholds
            av_norm_f = math.sqrt(sum(v * v for v in h) + w_norm_f * w_norm_f)
            scales.append(av_norm_f)
            # Breakdown: A M v_j lies in the basis up to rounding: no new vector, cycle ends.
            broke = w_norm_f <= breakdown * av_norm_f
            if broke:
                w_norm_f = 0.0
            elif w_norm_f != 0:  # (not broke, so 0 only for a NaN)
                torch.mul(w, 1.0 / w_norm_f, out=rows[j + 1])
            h.append(w_norm_f)
            # Q^T h: the earlier rotations, each on rows (i, i+1) as [[c, s], [-s, c]]
            for i, (c, s) in enumerate(rotations):
                h[i], h[i + 1] = c * h[i] + s * h[i + 1], c * h[i + 1] - s * h[i]
            # the new rotation zeroes h[j + 1]: c = h_j / rho, s = h_{j+1} / rho (c = 1 at rho = 0)
            rho = math.hypot(h[j], h[j + 1])
            c, s = (h[j] / rho, h[j + 1] / rho) if rho != 0 else (1.0, h[j + 1])
            rotations.append((c, s))
            h[j], h[j + 1] = c * h[j] + s * h[j + 1], c * h[j + 1] - s * h[j]
            upper.append(h[: j + 1])
            g[j], g[j + 1] = c * g[j], -s * g[j]
            steps += 1
            # stop on a met (or NaN) estimate, a breakdown, or the iteration budget
            if not abs(g[j + 1]) > tol or broke or steps >= budget:
                break
        # R y = g over the steps taken (back substitution); a pivot vanished to rounding gives
        # y_i = 0, as in the batched cycle
        y = [0.0] * m
        for i in reversed(range(steps)):
            diag = upper[i][i]
            if abs(diag) > breakdown * scales[i]:
                total = g[i] - sum(upper[k][i] * y[k] for k in range(i + 1, steps))
                y[i] = total / diag
        dx = (torch.tensor(y, dtype=dtype, device=device) @ basis[:m]).view(r.shape)
        x = x + self._precondition(dx)
        claimed = torch.tensor(abs(g[steps]) <= tol, device=device)
        return x, iterations + steps, claimed

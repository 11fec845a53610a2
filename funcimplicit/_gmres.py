"""Restarted GMRES with per-element stopping, vectorized so it runs under ``vmap``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import _tree
from ._convergence import LinearSolveResult
from ._loop import ALL_DONE, NONE_DONE, progress, safe_div
from ._solver_base import IterativeSolver, Operator, rounding_slack
from ._tree import TreeT

__all__ = ["GMRES"]


@dataclass(frozen=True, kw_only=True)
class GMRES(IterativeSolver):
    """Restarted GMRES(``restart``) for general square ``A``, right-preconditioned.

    Each cycle builds an orthonormal Krylov basis (classical Gram-Schmidt applied twice, as
    matrix products over the stacked basis) and minimizes the residual over it with Givens
    rotations. A cycle ends early once the residual estimate meets the tolerance; every
    restart recomputes the true residual. ``maxiter`` counts Arnoldi steps (one matvec each);
    at most ``ceil(maxiter / restart)`` cycles run.

    Example:
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

    def _solve(
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
        for cycle in range(cycles):
            r = b if (cycle == 0 and init is None) else _tree.sub(b, operator(x))
            beta = _tree.norm(r)
            # Accept the true residual; after a cycle whose estimate met the tolerance, allow
            # the rounding drift between estimate and true residual.
            converged = (beta <= tolerance) | (claimed & (beta <= tolerance + slack))
            done = converged | ~torch.isfinite(beta) | (iterations >= maxiter)
            if cycle == cycles - 1 or progress(done) == ALL_DONE:
                break
            x, iterations, claimed = self._cycle(
                operator, r, beta, x, done, iterations, tolerance, m, maxiter
            )
        converged = converged & torch.isfinite(beta)
        return LinearSolveResult(x, iterations, beta, tolerance, converged)

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
        leaves, spec = _tree.flatten(r)
        shapes = [leaf.shape for leaf in leaves]
        dtype = beta.dtype
        eye = torch.eye(m + 1, dtype=dtype, device=beta.device)
        # basis[k] holds the k-th Krylov vector's leaf, flattened: shape (m + 1, leaf.numel())
        v0 = [safe_div(torch.ones_like(beta), beta) * leaf.reshape(-1) for leaf in leaves]
        basis = [eye[0][:, None] * v[None, :] for v in v0]
        rotations = eye  # Q^T: the product of the Givens rotations so far
        upper = (
            torch.zeros(m + 1, m, dtype=dtype, device=beta.device) * beta
        )  # R, batched like beta
        g = beta * eye[0]  # Q^T (beta e_0); |g[j + 1]| is the residual estimate after step j
        steps = torch.zeros_like(iterations)
        inner_done = done | (iterations >= maxiter)
        for j in range(m):
            status = progress(inner_done)
            if status == ALL_DONE:
                break
            active = ~inner_done
            # Arnoldi: w = A M v_j, orthogonalized twice against v_0..v_j (zeros beyond).
            v_j = _tree.unflatten(
                spec, [q[j].reshape(s) for q, s in zip(basis, shapes, strict=True)]
            )
            w = [leaf.reshape(-1) for leaf in _tree.flatten(operator(self._precondition(v_j)))[0]]
            h = torch.zeros(m + 1, dtype=dtype, device=beta.device)
            for _ in range(2):
                coeffs = sum(q @ wl for q, wl in zip(basis, w, strict=True))
                w = [wl - coeffs @ q for q, wl in zip(basis, w, strict=True)]
                h = h + coeffs
            w_norm = torch.sqrt(sum(torch.sum(wl * wl) for wl in w))  # type: ignore[arg-type]
            h = h + w_norm * eye[j + 1]
            scale = safe_div(torch.ones_like(w_norm), w_norm)
            if status != NONE_DONE:
                scale = torch.where(active, scale, 0.0)  # frozen elements add no basis vector
            basis = [
                q + eye[j + 1][:, None] * (scale * wl)[None, :]
                for q, wl in zip(basis, w, strict=True)
            ]
            # Givens rotation G zeroing entry j + 1 of the rotated column u = Q^T h:
            # G acts on rows (j, j+1) as [[c, s], [-s, c]], c = u_j / rho, s = u_{j+1} / rho.
            u = rotations @ h
            rho = torch.hypot(u[j], u[j + 1])
            c = torch.where(rho == 0, 1.0, safe_div(u[j], rho))
            s = safe_div(u[j + 1], rho)
            pair = eye[j][:, None] * eye[j][None, :] + eye[j + 1][:, None] * eye[j + 1][None, :]
            swap = eye[j][:, None] * eye[j + 1][None, :] - eye[j + 1][:, None] * eye[j][None, :]
            givens = eye + (c - 1) * pair + s * swap
            new_upper = upper + (givens @ u)[:, None] * eye[j][None, :m]
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
            estimate = torch.abs(g[j + 1])
            inner_done = inner_done | (estimate <= tolerance) | (iterations + steps >= maxiter)
            inner_done = inner_done | ~torch.isfinite(estimate)
        # Minimize ||beta e_0 - H y|| over the steps taken: R y = g on the used columns; unused
        # columns get a unit diagonal and zero right-hand side, so their y is 0.
        used = torch.arange(m, device=beta.device) < steps
        diag = torch.diagonal(upper[:m])
        fix = (~used) | (diag == 0)
        square = upper[:m] + torch.diag(fix.to(dtype) - torch.where(fix, diag, 0.0))
        y = torch.linalg.solve_triangular(
            square, torch.where(used, g[:m], 0.0)[:, None], upper=True
        )[:, 0]
        dx = _tree.unflatten(
            spec, [(y @ q[:m]).reshape(s) for q, s in zip(basis, shapes, strict=True)]
        )
        x = _tree.where(done, x, _tree.add(x, self._precondition(dx)))
        claimed = torch.abs(g.gather(0, steps.clamp_min(0).reshape(1))[0]) <= tolerance
        return x, iterations + steps, claimed

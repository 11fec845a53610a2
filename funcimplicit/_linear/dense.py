"""Dense solvers: materialize ``A`` over all pytree leaves jointly, then factorize."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import tree as _tree
from .._core.result import LinearSolveResult, Status
from .._core.tree import TensorTree
from .base import LinearSolverBase, Operator, finish

__all__ = ["LU", "Cholesky", "materialize"]


def materialize(operator: Operator, b: TensorTree) -> torch.Tensor:
    """The ``n x n`` matrix of ``operator`` on the raveled pytree (all leaves, coupled).

    Column ``i`` is ``A e_i``; the columns are computed with one ``vmap`` over the identity
    (a loop over columns if ``matvec`` cannot be vmapped).
    """
    vector, unravel = _tree.ravel(b)

    def flat(v: torch.Tensor) -> torch.Tensor:
        return _tree.ravel(operator(unravel(v)))[0]

    eye = torch.eye(vector.shape[0], dtype=vector.dtype, device=vector.device)
    try:
        rows = torch.func.vmap(flat)(eye)
    except RuntimeError:  # a matvec without vmap support: one column at a time
        rows = torch.stack([flat(e) for e in eye])
    return rows.mT


@dataclass(frozen=True, kw_only=True)
class _DenseSolver(LinearSolverBase):
    """Dense factorization; ``rtol`` defaults to ``sqrt(eps)`` and only judges the result."""

    materializes: ClassVar[bool] = True

    def _default_rtol(self, dtype: torch.dtype) -> float:
        return math.sqrt(torch.finfo(dtype).eps)

    @property
    def failure_hint(self) -> str:
        return "The system looks singular or ill-conditioned: set ridge > 0 to regularize it."

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        matrix = materialize(operator, b)
        rhs, unravel = _tree.ravel(b)
        x, ok = self._factor_solve(matrix, rhs[:, None])
        x = x[:, 0]
        # The honest residual (NaN where x is not finite: the base then makes x NaN); a
        # failed factorization (e.g. Cholesky of an indefinite A) is not converged either.
        residual = torch.linalg.vector_norm(rhs - matrix @ x)
        iterations = torch.ones_like(residual, dtype=torch.int64)

        def failure() -> torch.Tensor:
            return torch.where(ok, int(Status.MAX_ITERATIONS), int(Status.BREAKDOWN))

        return finish(unravel(x), iterations, residual, tolerance, valid=ok, failure=failure)

    def _factor_solve(
        self, matrix: torch.Tensor, rhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LU(_DenseSolver):
    """Dense LU with partial pivoting for any square ``A`` (``O(n^3)``; ``n`` = all elements).

    Uses ``lu_factor``/``lu_unpack`` and two triangular solves, which stay correct under
    nested ``vmap`` (``torch.linalg.solve``/``lu_solve`` do not on torch 2.13).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> fi.LU()(lambda v: A @ v, b)
        tensor([1., 1.], dtype=torch.float64)
    """

    def _factor_solve(
        self, matrix: torch.Tensor, rhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # A = P L U  =>  x = U^{-1} L^{-1} P^T b
        factors, pivots, _ = torch.linalg.lu_factor_ex(matrix)
        perm, lower, upper = torch.lu_unpack(factors, pivots)
        y = torch.linalg.solve_triangular(lower, perm.mT @ rhs, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, y, upper=True)
        return x, torch.isfinite(x).all()


@dataclass(frozen=True, kw_only=True)
class Cholesky(_DenseSolver):
    """Dense Cholesky for symmetric positive definite ``A``; an indefinite ``A`` is reported.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = torch.tensor([5.0, 4.0], dtype=torch.float64)
        >>> fi.Cholesky()(lambda v: A @ v, b)
        tensor([1., 1.], dtype=torch.float64)
    """

    requires_symmetric: ClassVar[bool] = True

    def _factor_solve(
        self, matrix: torch.Tensor, rhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # A = L L^T  =>  x = L^{-T} L^{-1} b
        lower, info = torch.linalg.cholesky_ex(matrix)
        y = torch.linalg.solve_triangular(lower, rhs, upper=False)
        x = torch.linalg.solve_triangular(lower.mT, y, upper=True)
        return x, (info == 0) & torch.isfinite(x).all()

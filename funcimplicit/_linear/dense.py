"""Dense solvers: materialize ``A`` over all pytree leaves jointly, then factorize."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import tree as _tree
from .._core.compat import active_transforms, physical
from .._core.result import LinearSolveResult, Status
from .._core.tree import TensorTree
from .base import LinearSolverBase, Operator, finish

__all__ = ["LU", "Cholesky", "FactorCache", "cache_of", "dense_solve", "materialize"]


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


#: ``solve(rhs, adjoint)``: ``A^{-1} rhs`` (``A^{-T} rhs`` when ``adjoint``) for an
#: ``(n, k)`` right-hand side, from one factorization of ``A``.
FactorSolve = Callable[[torch.Tensor, bool], torch.Tensor]


class FactorCache:
    """One factorization of one call's Jacobian ``J``, shared by the solves of that call.

    The derivative rule of one implicit solve (``linear_solve``, ``implicit_root``) solves
    with ``J`` or ``J^T`` at the same point in its forward, backward and jvp passes, and in
    those of its own derivatives (a Hessian). A dense solver carrying a cache (see
    :func:`reusing`) factorizes once and solves every later system by the stored factors.
    The rule sets :attr:`adjoint` around each solve: whether that solve's operator is
    ``J^T`` (``True``), ``J`` (``False``), or unknown (``None``: no reuse). Factors are
    stored and reused only outside ``torch.func`` transforms (eager calls, classic autograd
    and its ``create_graph`` higher orders).
    """

    def __init__(self) -> None:
        self.adjoint: bool | None = None
        #: ``(solve, matrix, adjoint of the stored matrix)`` once factorized
        self.entry: tuple[FactorSolve, torch.Tensor, bool] | None = None
        self.factorizations = 0


def cache_of(solver: Any) -> FactorCache | None:
    """The :class:`FactorCache` a solver carries, if any."""
    cache = getattr(solver, "factor_cache", None)
    return cache if isinstance(cache, FactorCache) else None


def dense_solve(
    cache: FactorCache | None,
    operator: Operator,
    b: Any,
    tolerance: torch.Tensor,
    factorize: Callable[[torch.Tensor, torch.Tensor], tuple[FactorSolve, torch.Tensor]],
) -> LinearSolveResult[Any]:
    """Materialize, factorize (or take the cached factors) and solve; judge by the residual.

    ``factorize(matrix, rhs)`` returns ``(solve, ok)``: the factors' solve and whether the
    factorization succeeded (0-d bool).
    """
    rhs, unravel = _tree.ravel(b)
    column = rhs[:, None]
    # Reuse only outside torch.func transforms: inside one (a rule's jvp under jacfwd, a
    # vmapped backward) mixing stored plain factors with the level's tensors trips torch's
    # level checks (INTERNAL ASSERT level <= current_level); there each solve factorizes.
    adjoint = None if cache is None or active_transforms() != [] else cache.adjoint
    if cache is not None and cache.entry is not None and adjoint is not None:
        solve, stored, stored_adjoint = cache.entry
        flip = adjoint != stored_adjoint
        matrix = stored.mT if flip else stored
        x = solve(column, flip)[:, 0]
        ok = torch.isfinite(x).all()
    else:
        matrix = materialize(operator, b)
        plain = physical(matrix)
        # Store only factors of a plain matrix of one problem: under grad/jvp the wrapper's
        # values are the plain tensor's, under vmap (a batch inside) nothing is stored.
        storable = adjoint is not None and plain is not None and plain.shape == matrix.shape
        if storable:
            assert plain is not None
            matrix = plain
        solve, ok = factorize(matrix, column)
        if cache is not None:
            cache.factorizations += 1
        x = solve(column, False)[:, 0]
        ok = ok & torch.isfinite(x).all()
        if storable and cache is not None and adjoint is not None:
            cache.entry = (solve, matrix, adjoint)
    # The honest residual (NaN where x is not finite: the base then makes x NaN); a
    # failed factorization (e.g. Cholesky of an indefinite A) is not converged either.
    residual = torch.linalg.vector_norm(rhs - matrix @ x)
    iterations = torch.ones_like(residual, dtype=torch.int64)

    def failure() -> torch.Tensor:
        return torch.where(ok, int(Status.MAX_ITERATIONS), int(Status.BREAKDOWN))

    return finish(unravel(x), iterations, residual, tolerance, valid=ok, failure=failure)


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
        def factorize(matrix: torch.Tensor, rhs: torch.Tensor) -> tuple[FactorSolve, torch.Tensor]:
            return self._factorize(matrix)

        return dense_solve(cache_of(self), operator, b, tolerance, factorize)

    def _factorize(self, matrix: torch.Tensor) -> tuple[FactorSolve, torch.Tensor]:
        """The factors' solve and whether the factorization succeeded (0-d bool)."""
        raise NotImplementedError

    def _factor_solve(
        self, matrix: torch.Tensor, rhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        solve, ok = self._factorize(matrix)
        x = solve(rhs, False)
        return x, ok & torch.isfinite(x).all()


@dataclass(frozen=True, kw_only=True)
class LU(_DenseSolver):
    """Dense LU with partial pivoting for any square ``A`` (``O(n^3)``; ``n`` = all elements).

    Uses ``lu_factor``/``lu_unpack`` and two triangular solves, which stay correct under
    nested ``vmap`` (``torch.linalg.solve``/``lu_solve`` do not on torch 2.13). Within one
    ``linear_solve`` or ``implicit_root`` call, the derivative passes reuse the factors of
    the first factorization (``J^T`` systems by the transposed triangular solves).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> fi.LU()(lambda v: A @ v, b)
        tensor([1., 1.], dtype=torch.float64)
    """

    def _factorize(self, matrix: torch.Tensor) -> tuple[FactorSolve, torch.Tensor]:
        factors, pivots, info = torch.linalg.lu_factor_ex(matrix)
        perm, lower, upper = torch.lu_unpack(factors, pivots)

        # A = P L U  =>  A^{-1} b = U^{-1} L^{-1} P^T b,  A^{-T} b = P L^{-T} U^{-T} b
        def solve(rhs: torch.Tensor, adjoint: bool) -> torch.Tensor:
            if adjoint:
                y = torch.linalg.solve_triangular(upper.mT, rhs, upper=False)
                y = torch.linalg.solve_triangular(lower.mT, y, upper=True, unitriangular=True)
                back: torch.Tensor = perm @ y
                return back
            y = torch.linalg.solve_triangular(lower, perm.mT @ rhs, upper=False, unitriangular=True)
            x: torch.Tensor = torch.linalg.solve_triangular(upper, y, upper=True)
            return x

        return solve, torch.ones_like(info, dtype=torch.bool)


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

    def _factorize(self, matrix: torch.Tensor) -> tuple[FactorSolve, torch.Tensor]:
        lower, info = torch.linalg.cholesky_ex(matrix)

        # A = L L^T (= A^T)  =>  A^{-1} b = L^{-T} L^{-1} b
        def solve(rhs: torch.Tensor, adjoint: bool) -> torch.Tensor:
            y = torch.linalg.solve_triangular(lower, rhs, upper=False)
            x: torch.Tensor = torch.linalg.solve_triangular(lower.mT, y, upper=True)
            return x

        return solve, info == 0

"""``Auto``: the default linear solver, dense while the system is small, Krylov beyond.

A small system is materialized with one batched product over the identity's columns (all
pytree leaves jointly, :func:`funcimplicit._dense.materialize`) and factorized: that costs
about one ``vmap``-ed product and an ``O(n^3)`` factorization, where GMRES or CG pays one
dispatched product and its bookkeeping per iteration. Beyond ``max_dense`` unknowns (or where
the matrix would not fit the memory bound) a Krylov method runs instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import tree as _tree
from .._core.checks import floating_leaves
from .._core.loop import ALL_DONE, NONE_DONE, progress
from .._core.result import LinearSolveResult
from .._core.tree import TreeT
from .base import LinearSolverBase, Operator
from .cg import CG
from .dense import LU, Cholesky, FactorCache, FactorSolve, _DenseSolver, cache_of, dense_solve
from .gmres import GMRES

__all__ = ["DEFAULT_MAX_DENSE", "MAX_DENSE_BYTES", "Auto", "reusing"]

#: Unknowns up to which ``Auto`` factorizes a dense matrix. Measured on CPU, torch 2.13, one
#: thread, one process, interleaved (implicit_root hypergradients, fwd + bwd): ridge (SPD)
#: dense 3.0 / 22 / 47 / 216 ms at n = 100 / 300 / 500 / 700 against CG 14 / 29 / 101 / 117
#: and GMRES 34 / 59 / 93 / 173; a contractive tanh fixed point (non-symmetric) LU 7.4 / 16 /
#: 21 / 56 / 187 ms at n = 100 / 300 / 500 / 700 / 1000 against GMRES 24 / 35 / 28 / 75 / 96.
#: Dense wins up to 500 on both, and loses from 700 (ridge) or 1000 (fixed point).
DEFAULT_MAX_DENSE = 500
#: The materialized matrix may take at most this many bytes (256 MiB), whatever ``max_dense``.
MAX_DENSE_BYTES = 256 * 2**20


@dataclass(frozen=True, kw_only=True)
class _DenseChoice(_DenseSolver):
    """The dense half of ``Auto``: Cholesky when declared SPD (LU where it fails), else LU."""

    symmetric: bool = False

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        def factorize(matrix: torch.Tensor, rhs: torch.Tensor) -> tuple[FactorSolve, torch.Tensor]:
            if not self.symmetric:
                return LU._factorize(LU(), matrix)
            cholesky, ok = Cholesky._factorize(Cholesky(), matrix)
            x = cholesky(rhs, False)[:, 0]
            residual = torch.linalg.vector_norm(rhs[:, 0] - matrix @ x)
            # Cholesky reads one triangle: an indefinite or non-symmetric A either fails the
            # factorization or gives an x whose true residual fails; those elements use LU.
            good = ok & torch.isfinite(x).all() & (residual <= tolerance)
            status = progress(good)
            if status == ALL_DONE:
                return cholesky, ok
            lu, ok_lu = LU._factorize(LU(), matrix)
            if status == NONE_DONE:
                return lu, ok_lu

            def mixed(rhs: torch.Tensor, adjoint: bool) -> torch.Tensor:
                # some elements (or unknown, under compile): per element
                return torch.where(good, cholesky(rhs, adjoint), lu(rhs, adjoint))

            return mixed, torch.where(good, ok, ok_lu)

        return dense_solve(cache_of(self), operator, b, tolerance, factorize)


@dataclass(frozen=True, kw_only=True)
class Auto(LinearSolverBase):
    """The default linear solver (``solve=None``): dense while small, Krylov beyond.

    For ``n`` unknowns (all pytree leaves together) up to ``max_dense`` whose ``n x n``
    matrix fits in 256 MiB, ``A`` is materialized with one ``vmap``-ed product over the
    identity's columns and factorized: Cholesky when ``symmetric`` declares ``A`` symmetric
    positive definite (a minimization's Hessian; an element where Cholesky fails or leaves
    a residual above the tolerance is solved by LU instead), LU otherwise. Larger systems
    run ``GMRES`` (``CG`` when ``symmetric``). Under ``jacrev``/``jacfwd``/``hessian`` the
    operator does not depend on the vmapped cotangents, so one factorization serves them all.

    The dense path is judged like :class:`funcimplicit.LU` (``rtol`` defaults to
    ``sqrt(eps)``, usually met by far), the Krylov path like GMRES/CG. ``rtol``, ``atol``,
    ``ridge``, ``on_failure`` and ``maxiter`` pass to whichever runs. For a preconditioner,
    a restart length or a fixed method, pass that solver explicitly.

    Attributes:
        max_dense: the largest ``n`` factorized densely (default 500, measured on CPU).
        symmetric: whether ``A`` is symmetric positive definite (Cholesky / CG).
        maxiter: the Krylov path's iteration cap (``None``: its default).
        check_every: the Krylov path's host reads (see :class:`funcimplicit.CG`); the
            dense path reads nothing in its loop (it has none).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> A = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([4.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(fi.Auto()(lambda v: A @ v, b), torch.ones(2, dtype=torch.float64))
        True
    """

    max_dense: int = DEFAULT_MAX_DENSE
    symmetric: bool = False
    maxiter: int | None = None
    check_every: int | None = 1

    #: The dense path vmaps the operator: it must be differentiable-capable.
    applies_operator_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.max_dense, bool)
            or not isinstance(self.max_dense, int)
            or self.max_dense < 0
        ):
            raise ValueError(f"Auto: max_dense must be an int >= 0; received {self.max_dense!r}.")
        if self.check_every is not None and (
            isinstance(self.check_every, bool)
            or not isinstance(self.check_every, int)
            or self.check_every < 1
        ):
            raise ValueError(
                f"Auto: check_every must be a positive int or None; received {self.check_every!r}."
            )
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"Auto: symmetric must be a bool; received {self.symmetric!r}.")
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            raise ValueError(
                f"Auto: maxiter must be a positive int or None; received {self.maxiter!r}."
            )

    def dense(self, b: Any) -> bool:
        """Whether a right-hand side shaped like ``b`` is solved densely."""
        leaves = _tree.flatten(b)[0]
        n = _tree.size(b)
        itemsize = leaves[0].element_size() if leaves else 8
        return n <= self.max_dense and n * n * itemsize <= MAX_DENSE_BYTES

    def chosen(self, b: Any) -> LinearSolverBase:
        """The solver that runs for a right-hand side shaped like ``b``."""
        rtol, atol, ridge, on_failure = self.rtol, self.atol, self.ridge, self.on_failure
        if self.dense(b):
            return _DenseChoice(
                symmetric=self.symmetric, rtol=rtol, atol=atol, ridge=ridge, on_failure=on_failure
            )
        krylov = CG if self.symmetric else GMRES
        return krylov(
            maxiter=self.maxiter,
            check_every=self.check_every,
            rtol=rtol,
            atol=atol,
            ridge=ridge,
            on_failure=on_failure,
        )

    @property
    def failure_hint(self) -> str:
        return (
            "The system looks singular or ill-conditioned (dense path), or the Krylov method "
            "did not converge (large systems): set ridge > 0, or pass a solver explicitly "
            "(e.g. fi.GMRES(maxiter=..., preconditioner=...))."
        )

    # The base's signature verbatim; mypy 1.x still reports it as an incompatible override.
    def run(  # type: ignore[override]
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: TreeT | None = None
    ) -> LinearSolveResult[TreeT]:
        floating_leaves(b, f"{type(self).__name__}.run(matvec, b)", "b")
        chosen = self.chosen(b)
        cache = cache_of(self)
        if cache is not None and isinstance(chosen, _DenseSolver):
            object.__setattr__(chosen, "factor_cache", cache)
        return chosen.run(matvec, b, init)


def reusing(solver: Any) -> Any:
    """``solver`` with a fresh :class:`FactorCache` where it may factorize (the dense solvers
    and ``Auto``), else ``solver`` itself: for the solves of one implicit call."""
    if not isinstance(solver, _DenseSolver | Auto) or cache_of(solver) is not None:
        return solver
    out = copy.copy(solver)
    object.__setattr__(out, "factor_cache", FactorCache())
    return out

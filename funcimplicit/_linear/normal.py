"""Least squares through the normal equations: NormalCG."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import check_same_layout, floating_leaves
from .._core.result import LinearSolveResult
from .base import (
    IterativeSolver,
    default_rtol,
    non_finite_visible,
)
from .cg import CG

__all__ = ["NormalCG"]


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

    least_squares: ClassVar[bool] = True
    needs_transpose: ClassVar[bool] = True  # A^T comes from a VJP of the operator

    def normal_solver(self) -> CG:
        """CG with these settings, for ``(A^T A + ridge I) x = A^T b`` (the rules use it)."""
        return CG(
            rtol=self.rtol,
            atol=self.atol,
            ridge=self.ridge,
            maxiter=self.maxiter,
            preconditioner=self.preconditioner,
            on_failure=self.on_failure,
            check_every=self.check_every,
        )

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
        return non_finite_visible(inner.compute(normal, rhs, start, tolerance), _tree.norm(b))

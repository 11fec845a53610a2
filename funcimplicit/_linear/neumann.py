"""The Neumann series: Richardson iteration for contractive systems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._core import tree as _tree
from .._core.loop import iterate
from .._core.result import LinearSolveResult
from .base import (
    IterativeSolver,
    Operator,
    finish,
    start_residual,
)

__all__ = ["Neumann"]


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

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        x, r = start_residual(operator, b, init)
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

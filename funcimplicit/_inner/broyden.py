"""Broyden: a quasi-Newton root finder with low-rank Jacobian updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core.loop import safe_div
from .base import InnerMethod, InnerProblem

#: Broyden's state: ``(T(x), ||T(x)||, u rows, v rows)``.
_Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = ["Broyden"]


@dataclass(frozen=True, kw_only=True)
class Broyden(InnerMethod):
    """Limited-memory ("good") Broyden method for ``T(x) = 0``.

    Approximates the inverse Jacobian as ``H = scale * I + sum_i u_i v_i^T`` (at most
    ``memory`` terms; when full, it restarts from ``scale * I``) and steps
    ``x <- x - H T(x)``. After a step ``dx`` with ``df = T(x + dx) - T(x)``:
    ``H <- H + (dx - H df)(dx^T H) / (dx^T H df)``.
    An update with a vanishing denominator is skipped. ``scale = 1`` suits fixed points
    (``T = x - F(x)`` has Jacobian ``I - dF/dx``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def F(z, w):
        ...     return torch.tanh(0.5 * z + w)
        >>> w = torch.tensor([0.1, -0.2], dtype=torch.float64)
        >>> sol = fi.solve_fixed_point(F, torch.zeros(2, dtype=torch.float64), w,
        ...                            method=fi.Broyden())
        >>> torch.allclose(sol.value, F(sol.value, w)), bool(sol.converged)
        (True, True)
    """

    memory: int = 20
    scale: float = 1.0

    raveled: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"Broyden: memory must be a positive int; received {self.memory!r}.")
        if not isinstance(self.scale, int | float) or self.scale == 0:
            raise ValueError(f"Broyden: scale must be a nonzero number; received {self.scale!r}.")

    # State: T(x), ||T(x)||, and H's low-rank terms u_i, v_i as rows.
    def init(self, problem: InnerProblem, x: torch.Tensor) -> _Terms:
        t = problem.root(x)
        r_norm = torch.linalg.vector_norm(t)
        rows = torch.zeros(self.memory, x.shape[0], dtype=x.dtype, device=x.device) * r_norm
        return t, r_norm, rows, rows

    def step(
        self, problem: InnerProblem, x: torch.Tensor, state: _Terms, iteration: int
    ) -> tuple[torch.Tensor, _Terms]:
        t, _, us, vs = state
        k, m = iteration, self.memory

        def h(v: torch.Tensor) -> torch.Tensor:  # H v
            out: torch.Tensor = self.scale * v + (vs @ v) @ us
            return out

        def h_t(v: torch.Tensor) -> torch.Tensor:  # H^T v
            out: torch.Tensor = self.scale * v + (us @ v) @ vs
            return out

        dx = -h(t)
        x = x + dx
        t_next = problem.root(x)
        h_df = h(t_next - t)
        denom = torch.dot(dx, h_df)
        usable = torch.abs(denom) > torch.finfo(x.dtype).eps * torch.linalg.vector_norm(
            dx
        ) * torch.linalg.vector_norm(h_df)
        u = torch.where(usable, safe_div(torch.ones_like(denom), denom), 0.0) * (dx - h_df)
        v = h_t(dx)
        if k > 0 and k % m == 0:
            # Memory full: restart from H = scale * I. (Overwriting the oldest term
            # instead leaves terms built against an inverse that included it: diverges.)
            us, vs = us * 0, vs * 0
        j = k % m  # the term's row (a write by concatenation: one op, other rows untouched)
        us = torch.cat((us[:j], u[None, :], us[j + 1 :]))
        vs = torch.cat((vs[:j], v[None, :], vs[j + 1 :]))
        return x, (t_next, torch.linalg.vector_norm(t_next), us, vs)

    def residual_norm(self, problem: InnerProblem, x: Any, state: _Terms) -> torch.Tensor:
        return state[1]

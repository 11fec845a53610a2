"""Broyden: a quasi-Newton root finder with low-rank Jacobian updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._core import tree as _tree
from .._core.loop import iterate, safe_div
from .._core.tree import TreeT
from .base import InnerMethod, InnerProblem, Solution, classify

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

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"Broyden: memory must be a positive int; received {self.memory!r}.")
        if not isinstance(self.scale, int | float) or self.scale == 0:
            raise ValueError(f"Broyden: scale must be a nonzero number; received {self.scale!r}.")

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        x0, unravel = _tree.ravel(init)

        def root(v: torch.Tensor) -> torch.Tensor:
            return _tree.ravel(problem.root(unravel(v)))[0]

        m = self.memory
        t0 = root(x0)
        r_norm = torch.linalg.vector_norm(t0)
        us = torch.zeros(m, x0.shape[0], dtype=x0.dtype, device=x0.device) * r_norm
        vs = us
        eye = torch.eye(m, dtype=x0.dtype, device=x0.device)
        counter = [0]

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, t, us, vs, _ = state
            k = counter[0]
            counter[0] += 1

            def h(v: torch.Tensor) -> torch.Tensor:  # H v
                out: torch.Tensor = self.scale * v + (vs @ v) @ us
                return out

            def h_t(v: torch.Tensor) -> torch.Tensor:  # H^T v
                out: torch.Tensor = self.scale * v + (us @ v) @ vs
                return out

            dx = -h(t)
            x = x + dx
            t_next = root(x)
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
            slot = eye[k % m][:, None]
            us = us * (1 - slot) + slot * u[None, :]
            vs = vs * (1 - slot) + slot * v[None, :]
            r_norm = torch.linalg.vector_norm(t_next)
            return (x, t_next, us, vs, r_norm), problem.finished(r_norm, x)

        done = problem.finished(r_norm, x0)
        state, iterations, _ = iterate(step, (x0, t0, us, vs, r_norm), done, self.maxiter)
        x, _, _, _, r_norm = state
        return classify(unravel(x), iterations, r_norm, problem)

"""Projected gradient for constrained minimization ``min_{x in C} L(x, *args)``.

The solution is a fixed point of the projected gradient step, so the implicit derivative
differentiates the gradient mapping

    G(x, *args) = (x - P(x - eta grad_x L(x, *args), *args)) / eta = 0,

which holds at a constrained minimum (for convex ``C``) and reduces to ``grad L = 0`` where
no constraint is active. Its Jacobian ``A = (I - D (I - eta H)) / eta``, with ``D`` the
Jacobian of ``P`` and ``H`` the Hessian of ``L``, is not symmetric: GMRES by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._core import tree as _tree
from .._core.checks import check_same_layout
from .base import InnerMethod, InnerProblem

__all__ = ["ProjectedGradient"]


class GradientMapping:
    """``G(x, *args) = (x - P(x - eta grad L(x, *args), *args)) / eta``: zero at the solution."""

    def __init__(
        self,
        objective: Callable[..., torch.Tensor],
        projection: Callable[..., Any],
        step_size: float,
    ) -> None:
        self.objective, self.projection, self.step_size = objective, projection, step_size

    def __call__(self, x: Any, *args: Any) -> Any:
        g = torch.func.grad(self.objective)(x, *args)
        z = self.projection(_tree.axpy(-self.step_size, g, x), *args)
        return _tree.scale(1.0 / self.step_size, _tree.sub(x, z))


@dataclass(frozen=True, kw_only=True)
class ProjectedGradient(InnerMethod):
    """Projected gradient ``x <- P(x - step_size grad L(x, *args), *args)`` for
    :func:`minimize` over a convex set ``C`` with Euclidean projection ``P``.

    ``projection(x, *args)`` receives the same arguments as the objective, so a constraint
    whose parameters are meta-parameters (bounds, a radius) gets implicit derivatives in
    them too; a projection that needs only some arguments ignores the rest, e.g.
    ``projection=lambda x, Q, c, lo, hi: fi.projections.box(x, lo, hi)``. (A bound the
    projection closes over is differentiated too, as any tensor a callback touches.)
    Ready-made projections are in :mod:`funcimplicit.projections`.

    ``residual_norm`` is the norm of the gradient mapping
    ``(x - P(x - step_size grad L)) / step_size`` (the gradient norm where no constraint
    is active); the implicit derivative differentiates that mapping (see the maths page).
    Converges for ``step_size <= 1 / Lipschitz(grad L)``, linearly for strongly convex
    ``L``.

    Attributes:
        projection: ``P(x, *args)``, returning a point of ``C`` shaped like ``x``.
        step_size: the fixed step ``eta > 0``.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def L(x, target, radius):
        ...     return 0.5 * ((x - target) ** 2).sum()
        >>> def P(x, target, radius):
        ...     return fi.projections.l2_ball(x, radius)
        >>> target = torch.tensor([3.0, 4.0], dtype=torch.float64)
        >>> radius = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        >>> sol = fi.minimize(L, torch.zeros(2, dtype=torch.float64), target, radius,
        ...                   method=fi.ProjectedGradient(projection=P, step_size=0.5))
        >>> sol.value.detach()  # radius * target / ||target||
        tensor([1.2000, 1.6000], dtype=torch.float64)
        >>> sol.value.sum().backward()
        >>> radius.grad  # d(radius * 7 / 5) / d radius
        tensor(1.4000, dtype=torch.float64)
    """

    projection: Callable[..., Any]
    step_size: float
    maxiter: int = 1000

    problem_kinds: ClassVar[tuple[str, ...]] = ("minimize", "least_squares")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.projection):
            raise TypeError(
                "ProjectedGradient: projection must be a callable P(x, *args) returning a "
                f"point of the set shaped like x; received {type(self.projection).__name__}. "
                "See fi.projections for ready ones."
            )
        eta = self.step_size
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta > 0:
            raise ValueError(
                f"ProjectedGradient: step_size must be a number > 0; received {eta!r}. "
                "Take about 1 / (the Lipschitz constant of grad L)."
            )

    @property
    def failure_hint(self) -> str:
        return (
            "Raise maxiter, take step_size closer to 1 / Lipschitz(grad L) (too large "
            "diverges, too small crawls), or loosen rtol/atol."
        )

    def optimality(self, objective: Callable[..., Any]) -> Callable[..., Any] | None:
        return GradientMapping(objective, self.projection, float(self.step_size))

    # State: z = P(x - eta grad L(x)) and the residual ||x - z|| / eta, both at x.
    def init(self, problem: InnerProblem, x: Any) -> tuple[Any, torch.Tensor]:
        z = self.projection(_tree.axpy(-self.step_size, problem.root(x), x), *problem.args)
        call = "minimize(objective, init, *args) with ProjectedGradient"
        check_same_layout(z, x, call, "projection(x, *args)", "init")
        return z, _tree.norm(_tree.sub(x, z)) / self.step_size

    # x <- z, the projected gradient step from x
    def step(
        self, problem: InnerProblem, x: Any, state: tuple[Any, torch.Tensor], iteration: int
    ) -> tuple[Any, tuple[Any, torch.Tensor]]:
        x = state[0]
        z = self.projection(_tree.axpy(-self.step_size, problem.root(x), x), *problem.args)
        return x, (z, _tree.norm(_tree.sub(x, z)) / self.step_size)

    def residual_norm(
        self, problem: InnerProblem, x: Any, state: tuple[Any, torch.Tensor]
    ) -> torch.Tensor:
        return state[1]

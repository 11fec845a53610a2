"""``least_squares``, ``LBFGS``, ``GaussNewton``, ``LevenbergMarquardt``, ``ProjectedGradient``
and ``fi.projections``: results keep the structure of ``init``."""

from typing import assert_type

import torch

import funcimplicit as fi


def r(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return p[0] * torch.exp(p[1] * t)


def L(x: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    return (x["a"] * c).sum()


def P(x: dict[str, torch.Tensor], c: torch.Tensor) -> dict[str, torch.Tensor]:
    return fi.projections.nonnegative(x)


p0, t = torch.ones(2), torch.ones(5)
assert_type(fi.least_squares(r, p0, t), fi.Solution[torch.Tensor])
assert_type(fi.least_squares(r, p0, t, method=fi.GaussNewton()).value, torch.Tensor)
assert_type(fi.LevenbergMarquardt(damping=1e-2).damping, float)
linear: fi.LinearSolver = fi.GaussNewton(backtracking=False).solve
assert_type(fi.LBFGS(memory=5).memory, int)
x0 = {"a": torch.zeros(3)}
projected = fi.ProjectedGradient(projection=P, step_size=0.1)
assert_type(projected.step_size, float)
assert_type(
    fi.minimize(L, x0, torch.ones(3), method=projected), fi.Solution[dict[str, torch.Tensor]]
)
method: fi.InnerMethod = fi.LBFGS()

assert_type(fi.projections.box(torch.zeros(2), -1.0, torch.ones(2)), torch.Tensor)
assert_type(
    fi.projections.simplex((torch.zeros(2), torch.zeros(1))), tuple[torch.Tensor, torch.Tensor]
)
assert_type(fi.projections.l2_ball(x0, 2.0), dict[str, torch.Tensor])

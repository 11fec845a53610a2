"""``solve_fixed_point``, ``solve_root``, ``minimize``, the inner methods, ``Solution``."""

from typing import Literal, assert_type

import torch

import funcimplicit as fi


def F(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + theta


def T(x: dict[str, torch.Tensor], a: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": x["x"] ** 3 - a}


def L(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return (w**2).sum() * lam


x0 = torch.zeros(2)
theta = torch.ones(2)

fixed = fi.solve_fixed_point(F, x0, theta, method=fi.Anderson(history=3), solve=fi.GMRES())
assert_type(fixed, fi.Solution[torch.Tensor])
assert_type(fixed.value, torch.Tensor)
assert_type(fixed.iterations, torch.Tensor)
assert_type(fixed.residual_norm, torch.Tensor)
assert_type(fixed.tolerance, torch.Tensor)
assert_type(fixed.converged, torch.Tensor)
assert_type(fixed.status, torch.Tensor)

root = fi.solve_root(T, {"x": x0}, theta, method=fi.Newton(solve=fi.LU()), implicit=False)
assert_type(root, fi.Solution[dict[str, torch.Tensor]])
assert_type(root.value["x"], torch.Tensor)

assert_type(fi.minimize(L, x0, theta), fi.Solution[torch.Tensor])
assert_type(fi.minimize(L, (x0, x0), theta).value, tuple[torch.Tensor, torch.Tensor])

# Every inner method is an InnerMethod with the shared fields.
assert_type(fi.FixedPointIteration(damping=0.5), fi.FixedPointIteration)
assert_type(fi.Anderson(mixing=0.5, regularization=1e-8).history, int)
assert_type(fi.Broyden(memory=5, scale=1.0).memory, int)
linear: fi.LinearSolver = fi.Newton(backtracking=False).solve
assert_type(fi.GradientDescent(step_size=0.1).step_size, float)
method: fi.InnerMethod = fi.GradientDescent(maxiter=5, rtol=1e-6, atol=None, on_failure="ignore")
assert_type(method.maxiter, int)
assert_type(method.rtol, float | None)
assert_type(method.on_failure, Literal["warn", "raise", "ignore"])
assert_type(method.tolerances(torch.float64), tuple[float, float])
inner: fi.InnerSolver = method

# Status codes are an IntEnum: comparable with the int64 status tensor.
assert_type(fi.Status.CONVERGED, Literal[fi.Status.CONVERGED])
assert_type(int(fi.Status.NONFINITE), int)
assert_type(fixed.status == fi.Status.MAX_ITERATIONS, torch.Tensor)

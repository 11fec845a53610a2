"""The linear solver objects: fields, ``__call__`` and ``run``, and ``LinearSolveResult``."""

from typing import Any, Literal, assert_type

import torch

import funcimplicit as fi

A = torch.eye(2)
b = torch.ones(2)
pair = (torch.ones(2), torch.ones(3))


def matvec(v: torch.Tensor) -> torch.Tensor:
    return A @ v


cg = fi.CG(rtol=1e-8, atol=0.0, maxiter=10, ridge=0.1, preconditioner=None, on_failure="raise")
assert_type(cg, fi.CG)
assert_type(cg.rtol, float | None)
assert_type(cg.atol, float)
assert_type(cg.ridge, float)
assert_type(cg.maxiter, int | None)
assert_type(cg.on_failure, Literal["warn", "raise", "ignore"])
assert_type(cg.failure_hint, str)
assert_type(fi.CG.requires_symmetric, bool)
assert_type(fi.NormalCG.least_squares, bool)
assert_type(fi.LU.materializes, bool)
assert_type(fi.NormalCG.needs_transpose, bool)
assert_type(fi.NormalCG().normal_solver(), fi.LinearSolverBase)
assert_type(fi.Normal(fi.Cholesky()).inner, fi.LinearSolverBase)
assert_type(fi.Normal(fi.Cholesky(), ridge=0.1)(matvec, b), torch.Tensor)
assert_type(isinstance(cg, fi.LinearSolverBase), bool)
assert_type(isinstance(cg, fi.IterativeSolver), bool)

assert_type(fi.CG()(matvec, b), torch.Tensor)
assert_type(fi.CG()(lambda v: A @ v, b, init=b), torch.Tensor)
assert_type(fi.NormalCG()(matvec, b), torch.Tensor)
assert_type(fi.GMRES(restart=5)(matvec, b), torch.Tensor)
assert_type(fi.GMRES().restart, int)
assert_type(fi.BiCGStab()(matvec, b), torch.Tensor)
assert_type(fi.Neumann()(matvec, b), torch.Tensor)
assert_type(fi.LU()(matvec, b), torch.Tensor)
assert_type(fi.Cholesky(ridge=1e-3)(matvec, b), torch.Tensor)
assert_type(fi.Auto(symmetric=True)(matvec, b), torch.Tensor)
assert_type(fi.Auto(max_dense=0, check_every=None).run(matvec, b).solution, torch.Tensor)
assert_type(fi.GMRES()(lambda v: v, pair), tuple[torch.Tensor, torch.Tensor])

result = fi.GMRES().run(matvec, b)
assert_type(result, fi.LinearSolveResult[torch.Tensor])
assert_type(result.solution, torch.Tensor)
assert_type(result.iterations, torch.Tensor)
assert_type(result.residual_norm, torch.Tensor)
assert_type(result.tolerance, torch.Tensor)
assert_type(result.converged, torch.Tensor)
assert_type(fi.CG().run(lambda v: v, pair).solution, tuple[torch.Tensor, torch.Tensor])
assert_type(fi.LU().run(matvec, b, b), fi.LinearSolveResult[torch.Tensor])
# NormalCG's x may be shaped unlike b (least squares): its run is not structure-typed.
assert_type(fi.NormalCG().run(matvec, b), fi.LinearSolveResult[Any])

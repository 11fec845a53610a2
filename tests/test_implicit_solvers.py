"""Every linear solver behind the implicit rule, on every problem it applies to.

Guards the peers' defects: a 0-d problem getting zero gradient (CG with 0 iterations), dense
solvers ignoring the coupling between pytree leaves, and dense LU going wrong under nested
``vmap`` (``vmap(jacrev)`` of an implicit function, FINDINGS). Solvers for symmetric positive
definite ``A`` (CG, Cholesky) are tabled only for the minimization problems; Neumann only for the
contractive fixed point.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from implicit_problems import (
    COUPLED,
    CUBE,
    DEQ,
    LOGISTIC,
    RIDGE,
    TASK_SEEDS,
    Problem,
    assert_close,
    flat_params,
    flat_solution_fn,
    loss_fn,
    reference_derivatives,
    task_data,
)
from torch.func import grad, hessian, jacrev, vmap

import funcimplicit as fi

GENERAL = {
    "GMRES": fi.GMRES(),
    "GMRES_restart2": fi.GMRES(restart=2, maxiter=500),
    "BiCGStab": fi.BiCGStab(),
    "NormalCG": fi.NormalCG(),
    "LU": fi.LU(),
}
SPD = {"CG": fi.CG(), "Cholesky": fi.Cholesky()}

CASES = [
    (problem, name, solve)
    for problem in (RIDGE, LOGISTIC, CUBE, COUPLED)
    for name, solve in {**GENERAL, **SPD}.items()
] + [(DEQ, name, solve) for name, solve in {**GENERAL, "Neumann": fi.Neumann()}.items()]
IDS = [f"{p.name}-{name}" for p, name, _ in CASES]
cases = pytest.mark.parametrize(("problem", "name", "solve"), CASES, ids=IDS)


def _setup(
    problem: Problem, solve: object
) -> tuple[Problem, Any, torch.Tensor, Callable[[torch.Tensor], Any], tuple[Any, ...]]:
    v, unravel = flat_params(problem)
    return (
        problem.with_solve(solve),
        reference_derivatives(problem.name),
        v,
        unravel,
        problem.data(0),
    )


@cases
def test_grad(problem: Problem, name: str, solve: object) -> None:
    problem, ref, v, unravel, data = _setup(problem, solve)
    # NormalCG squares the condition number; 1e-8 still holds on these small problems.
    assert_close(grad(loss_fn(problem, data, unravel))(v), ref["grad"], tol=1e-8, what=name)


@cases
def test_hessian(problem: Problem, name: str, solve: object) -> None:
    problem, ref, v, unravel, data = _setup(problem, solve)
    assert_close(hessian(loss_fn(problem, data, unravel))(v), ref["hessian"], tol=1e-7, what=name)


@cases
def test_vmap_jacrev(problem: Problem, name: str, solve: object) -> None:
    # Nested vmap: vmap over tasks, jacrev's own vmap over cotangents, the solver inside.
    problem, _, v, unravel, _ = _setup(problem, solve)
    data = task_data(problem)
    jac = vmap(lambda d: jacrev(flat_solution_fn(problem, d, unravel))(v))(data)
    expected = torch.stack(
        [reference_derivatives(problem.name, 0, s)["jacobian"] for s in TASK_SEEDS]
    )
    assert_close(jac, expected, tol=1e-8, what=name)


def test_table_covers_every_solver() -> None:
    exported = {fi.CG, fi.GMRES, fi.BiCGStab, fi.NormalCG, fi.LU, fi.Cholesky, fi.Neumann}
    assert {type(s) for _, _, s in CASES} == exported

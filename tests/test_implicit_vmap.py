"""``vmap`` through implicit functions: per-task solutions, meta-gradients, Jacobians, Hessians.

Each task has its own data (and, where stated, its own params). References are per task, in a
Python loop, with classic autograd on the reference map (never ``vmap`` over a reference).
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
    IDS,
    PROBLEMS,
    TASK_SEEDS,
    Problem,
    assert_close,
    flat_params,
    flat_solution_fn,
    loss_fn,
    outer_loss,
    ravel,
    reference_derivatives,
    stack_trees,
    task_data,
)
from torch.func import grad, hessian, jacrev, vmap

pytestmark = pytest.mark.parametrize("problem", PROBLEMS, ids=IDS)


def _per_task(problem: Problem, key: str, shared_params: bool = True) -> torch.Tensor:
    """The reference ``key`` for each task of TASK_SEEDS, stacked (params seed 0 or = task)."""
    return torch.stack(
        [reference_derivatives(problem.name, 0 if shared_params else s, s)[key] for s in TASK_SEEDS]
    )


def _meta_loss(
    problem: Problem, unravel: Callable[[torch.Tensor], Any]
) -> Callable[[torch.Tensor, tuple[Any, ...]], torch.Tensor]:
    def meta_loss(v: torch.Tensor, data: tuple[Any, ...]) -> torch.Tensor:
        return outer_loss(problem.solve(unravel(v), data))

    return meta_loss


def test_vmap_solve(problem: Problem) -> None:
    v, unravel = flat_params(problem)
    data = task_data(problem)
    out = vmap(lambda d: ravel(problem.solve(unravel(v), d)))(data)
    assert_close(out, _per_task(problem, "solution"), tol=1e-12, what="vmap(solve)")


def test_vmap_grad_per_task_meta_gradients(problem: Problem) -> None:
    # The iMAML pattern: shared meta-params, one meta-gradient per task.
    v, unravel = flat_params(problem)
    data = task_data(problem)
    grads = vmap(grad(_meta_loss(problem, unravel)), in_dims=(None, 0))(v, data)
    assert_close(grads, _per_task(problem, "grad"), what="vmap(grad)")


def test_vmap_grad_per_task_params(problem: Problem) -> None:
    # Every task with its own params and data.
    _, unravel = flat_params(problem)
    vs = torch.stack([flat_params(problem, s)[0] for s in TASK_SEEDS])
    data = task_data(problem)
    grads = vmap(grad(_meta_loss(problem, unravel)))(vs, data)
    assert_close(grads, _per_task(problem, "grad", shared_params=False), what="vmap(grad) per-task")


def test_vmap_grad_equals_unbatched(problem: Problem) -> None:
    # "Equal to the unbatched result" up to rounding: same iterations, same stopping decision.
    v, unravel = flat_params(problem)
    data = task_data(problem)
    batched = vmap(grad(_meta_loss(problem, unravel)), in_dims=(None, 0))(v, data)
    loop = torch.stack([grad(_meta_loss(problem, unravel))(v, problem.data(s)) for s in TASK_SEEDS])
    assert_close(batched, loop, tol=1e-12, what="vmap(grad) vs loop of grad")


def test_vmap_jacrev(problem: Problem) -> None:
    v, unravel = flat_params(problem)
    data = task_data(problem)

    def jac(d: tuple[Any, ...]) -> torch.Tensor:
        jacobian: torch.Tensor = jacrev(flat_solution_fn(problem, d, unravel))(v)
        return jacobian

    assert_close(vmap(jac)(data), _per_task(problem, "jacobian"), what="vmap(jacrev)")


def test_vmap_hessian(problem: Problem) -> None:
    v, unravel = flat_params(problem)
    data = task_data(problem)

    def hess(d: tuple[Any, ...]) -> torch.Tensor:
        second: torch.Tensor = hessian(loss_fn(problem, d, unravel))(v)
        return second

    assert_close(vmap(hess)(data), _per_task(problem, "hessian"), tol=1e-8, what="vmap(hessian)")


def test_grad_of_vmap(problem: Problem) -> None:
    # The meta-gradient of the summed task losses (shared params): sum of per-task gradients.
    v, unravel = flat_params(problem)
    data = task_data(problem)

    def total(vv: torch.Tensor) -> torch.Tensor:
        return vmap(_meta_loss(problem, unravel), in_dims=(None, 0))(vv, data).sum()

    assert_close(grad(total)(v), _per_task(problem, "grad").sum(0), what="grad(vmap)")


def test_autograd_backward_through_vmap(problem: Problem) -> None:
    # Classic .backward() through a vmapped solve.
    v, unravel = flat_params(problem)
    data = task_data(problem)
    vv = v.clone().requires_grad_(True)
    vmap(_meta_loss(problem, unravel), in_dims=(None, 0))(vv, data).sum().backward()  # type: ignore[no-untyped-call]
    assert_close(vv.grad, _per_task(problem, "grad").sum(0), what="vmap then .backward()")


def test_vmap_vmap_grad(problem: Problem) -> None:
    # Tasks in a 2 x 3 grid: two meta-parameter settings (outer vmap) x three tasks (inner).
    _, unravel = flat_params(problem)
    vs = torch.stack([flat_params(problem, s)[0] for s in (0, 1)])
    data = task_data(problem)
    grads = vmap(vmap(grad(_meta_loss(problem, unravel)), in_dims=(None, 0)), in_dims=(0, None))(
        vs, data
    )
    expected = torch.stack(
        [
            torch.stack([reference_derivatives(problem.name, p, s)["grad"] for s in TASK_SEEDS])
            for p in (0, 1)
        ]
    )
    assert_close(grads, expected, what="vmap(vmap(grad))")


def test_vmap_over_a_batch_of_batches_of_data(problem: Problem) -> None:
    # Data batched in two dimensions, both vmapped: (2 outer) x (3 tasks).
    v, unravel = flat_params(problem)
    data = stack_trees([task_data(problem, TASK_SEEDS), task_data(problem, (4, 5, 6))])
    grads = vmap(vmap(grad(_meta_loss(problem, unravel)), in_dims=(None, 0)), in_dims=(None, 0))(
        v, data
    )
    expected = torch.stack(
        [
            torch.stack([reference_derivatives(problem.name, 0, s)["grad"] for s in seeds])
            for seeds in (TASK_SEEDS, (4, 5, 6))
        ]
    )
    assert_close(grads, expected, what="vmap(vmap(grad)) over data")

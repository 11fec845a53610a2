"""Reverse mode through ``implicit_root`` / ``fixed_point``: classic autograd and torch.func.

Every cell compares against the independent references of ``implicit_problems`` (closed forms or
classic autograd through converged unrolled iterations), float64, to 1e-9 or better.
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
    Problem,
    assert_close,
    central_difference_jacobian,
    flat_params,
    flat_solution_fn,
    leaves,
    loss_fn,
    outer_loss,
    ravel,
    reference_derivatives,
    tree_map,
)
from torch.func import grad, jacrev, vjp

pytestmark = pytest.mark.parametrize("problem", PROBLEMS, ids=IDS)


def _setup(
    problem: Problem,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, Callable[[torch.Tensor], Any], tuple[Any, ...]]:
    ref = reference_derivatives(problem.name)
    v, unravel = flat_params(problem)
    return ref, v, unravel, problem.data(0)


def test_reference_matches_finite_differences(problem: Problem) -> None:
    # Validates the reference itself: its Jacobian (classic autograd through a closed form or
    # unrolled iterations) against central differences of the undifferentiated solver.
    # Central differences with eps = 1e-6 are accurate to ~1e-10 here; 1e-7 leaves margin.
    ref, v, unravel, data = _setup(problem)
    fd = central_difference_jacobian(flat_solution_fn(problem, data, unravel), v)
    assert_close(ref["jacobian"], fd, tol=1e-7, what="reference Jacobian vs finite differences")
    assert_close(
        ravel(problem.solve(unravel(v), data)), ref["solution"], tol=1e-12, what="solution"
    )


def test_autograd_grad(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    params = tree_map(lambda t: t.clone().requires_grad_(True), unravel(v))
    loss = outer_loss(problem.solve(params, data))
    grads = torch.autograd.grad(loss, leaves(params))
    assert_close(torch.cat([g.reshape(-1) for g in grads]), ref["grad"], what="autograd.grad")


def test_backward_accumulates_grad_on_params_only(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    params = tree_map(lambda t: t.clone().requires_grad_(True), unravel(v))
    outer_loss(problem.solve(params, data)).backward()  # type: ignore[no-untyped-call]
    assert_close(ravel(tree_map(lambda t: t.grad, params)), ref["grad"], what=".backward()")
    # A second backward through a fresh graph accumulates (classic semantics).
    outer_loss(problem.solve(params, data)).backward()  # type: ignore[no-untyped-call]
    assert_close(ravel(tree_map(lambda t: t.grad, params)), 2 * ref["grad"], what="accumulated")
    for d in leaves(data):
        assert d.grad is None


def test_func_grad(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    assert_close(grad(loss_fn(problem, data, unravel))(v), ref["grad"], what="torch.func.grad")


def test_func_grad_on_pytree_params(problem: Problem) -> None:
    # torch.func.grad directly in the parameter pytree (dicts, tuples, 0-d leaves).
    ref, v, unravel, data = _setup(problem)
    g = grad(lambda p: outer_loss(problem.solve(p, data)))(unravel(v))
    assert optree_structure_equal(g, unravel(v))
    assert_close(ravel(g), ref["grad"], what="grad in the pytree")


def optree_structure_equal(a: Any, b: Any) -> bool:
    import optree

    return optree.tree_structure(a) == optree.tree_structure(b)


def test_vjp(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    cot = torch.linspace(-1.0, 2.0, ref["solution"].numel(), dtype=torch.float64)
    out, pullback = vjp(flat_solution_fn(problem, data, unravel), v)  # type: ignore[misc]
    assert_close(out, ref["solution"], tol=1e-12, what="vjp primal")
    (g,) = pullback(cot)
    assert_close(g, cot @ ref["jacobian"], what="vjp")


def test_vjp_structured_cotangent(problem: Problem) -> None:
    # The cotangent arrives with the solution's own structure (namedtuple, 0-d, ...).
    ref, v, unravel, data = _setup(problem)
    out, pullback = vjp(lambda p: problem.solve(p, data), unravel(v))  # type: ignore[misc]
    cot = tree_map(lambda t: torch.full_like(t, 0.5), out)
    (g,) = pullback(cot)
    assert_close(ravel(g), ravel(cot) @ ref["jacobian"], what="vjp in pytrees")


def test_jacrev(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    jac = jacrev(flat_solution_fn(problem, data, unravel))(v)
    assert_close(jac, ref["jacobian"], what="jacrev")


def test_jacrev_jacrev(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    hess = jacrev(jacrev(loss_fn(problem, data, unravel)))(v)
    assert_close(hess, ref["hessian"], tol=1e-8, what="jacrev(jacrev)")


def test_autograd_double_backward(problem: Problem) -> None:
    # Reverse-over-reverse with classic autograd: Hessian-vector product via create_graph.
    ref, v, unravel, data = _setup(problem)
    vv = v.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(problem, data, unravel)(vv), vv, create_graph=True)
    assert_close(g.detach(), ref["grad"], what="first order")
    direction = torch.linspace(1.0, -1.0, v.numel(), dtype=torch.float64)
    (hvp,) = torch.autograd.grad(g @ direction, vv)
    assert_close(hvp, ref["hessian"] @ direction, tol=1e-8, what="Hessian-vector product")


def test_gradcheck(problem: Problem) -> None:
    # Finite differences of the solver against the implicit backward.
    _, v, unravel, data = _setup(problem)
    fn = flat_solution_fn(problem, data, unravel)
    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(True),))


def test_gradcheck_batched_grad(problem: Problem) -> None:
    # gradcheck's batched-gradient check runs the backward under torch's *legacy* vmap
    # (torch._vmap_internals), as autograd.functional's vectorize=True does.
    _, v, unravel, data = _setup(problem)
    fn = flat_solution_fn(problem, data, unravel)
    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(True),), check_batched_grad=True)


def test_autograd_functional_vectorized(problem: Problem) -> None:
    # torch.autograd.functional.jacobian / hessian with vectorize=True (legacy vmap over the
    # backward) against the reference.
    ref, v, unravel, data = _setup(problem)
    jac = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
        flat_solution_fn(problem, data, unravel), v, vectorize=True
    )
    assert_close(jac, ref["jacobian"], what="jacobian(vectorize=True)")
    hess = torch.autograd.functional.hessian(loss_fn(problem, data, unravel), v, vectorize=True)  # type: ignore[no-untyped-call]
    assert_close(hess, ref["hessian"], tol=1e-8, what="hessian(vectorize=True)")


def test_autograd_functional_hessian(problem: Problem) -> None:
    # The classic (non-vectorized) reverse-over-reverse Hessian of the outer loss.
    ref, v, unravel, data = _setup(problem)
    hess = torch.autograd.functional.hessian(loss_fn(problem, data, unravel), v)  # type: ignore[no-untyped-call]
    assert_close(hess, ref["hessian"], tol=1e-8, what="autograd.functional.hessian")


def test_gradgradcheck(problem: Problem) -> None:
    _, v, unravel, data = _setup(problem)
    fn = flat_solution_fn(problem, data, unravel)
    assert torch.autograd.gradgradcheck(fn, (v.clone().requires_grad_(True),))


def test_gradcheck_in_data(problem: Problem) -> None:
    # Derivatives in the data arguments too (where the decorator's argnums include them):
    # gradcheck over every tensor the solver is differentiable in, jointly with the params.
    _, v, unravel, data = _setup(problem)
    if problem.name == "logistic":  # argnums=1: X and y are constants, checked in the pytree tests
        data_in = ()
    else:
        data_in = tuple(d.clone().requires_grad_(True) for d in data)

    def fn(vv: torch.Tensor, *ds: torch.Tensor) -> torch.Tensor:
        return ravel(problem.solve(unravel(vv), ds if ds else data))

    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(True), *data_in))


def test_data_gradient_matches_reference(problem: Problem) -> None:
    # The gradient in the data (where differentiable) against classic autograd on the reference.
    _, v, unravel, data = _setup(problem)
    params = unravel(v)
    d_impl = tuple(d.clone().requires_grad_(True) for d in data)
    if problem.name == "logistic":
        # argnums=1: X and y are constants of this solver, even when they require grad.
        out = problem.solve(params, d_impl)
        assert not out.requires_grad
        assert all(d.grad is None for d in d_impl)
        return
    d_ref = tuple(d.clone().requires_grad_(True) for d in data)
    g_impl = torch.autograd.grad(outer_loss(problem.solve(params, d_impl)), d_impl)
    g_ref = torch.autograd.grad(outer_loss(problem.reference(params, d_ref)), d_ref)
    assert_close(g_impl, g_ref, what="gradient in the data")


def test_loss_of_solution_and_params(problem: Problem) -> None:
    # The meta-loss also depends on the params directly (both paths must be summed).
    ref, v, unravel, data = _setup(problem)

    def meta(vv: torch.Tensor) -> torch.Tensor:
        return outer_loss(problem.solve(unravel(vv), data)) + torch.sum(torch.cos(vv))

    expected = ref["grad"] - torch.sin(v)
    assert_close(grad(meta)(v), expected, what="total derivative")


def test_unused_solution_gives_zero_not_none(problem: Problem) -> None:
    # A loss that uses only some leaves of the solution: the other cotangents are zeros.
    ref, v, unravel, data = _setup(problem)
    first = leaves(problem.solve(unravel(v), data))[0].numel()

    def partial_loss(vv: torch.Tensor) -> torch.Tensor:
        first_leaf: torch.Tensor = leaves(problem.solve(unravel(vv), data))[0]
        return first_leaf.sum()

    assert_close(grad(partial_loss)(v), ref["jacobian"][:first].sum(0), what="partial loss")

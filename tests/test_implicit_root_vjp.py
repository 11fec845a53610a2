"""``root_vjp`` / ``root_jvp``: against the references of every problem, in every argument, and
their own differentiability (they are differentiable functions of the args, the solution, the
cotangent and the tangents)."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import optree
import pytest
import torch
from implicit_problems import (
    CUBE,
    IDS,
    PROBLEMS,
    RIDGE,
    Problem,
    assert_close,
    ravel,
    ridge_optimality,
)
from torch.func import grad, jacrev, vmap

import funcimplicit as fi

F64 = torch.float64
problems = pytest.mark.parametrize("problem", PROBLEMS, ids=IDS)
SOLVES = pytest.mark.parametrize("use_default", [False, True], ids=["table-solve", "default-solve"])


def _cotangent(solution: Any) -> Any:
    flat = ravel(solution)
    c = torch.linspace(-1.0, 2.0, flat.numel(), dtype=F64) + 0.3
    return (
        optree.tree_unflatten(
            optree.tree_structure(solution),
            list(torch.split(c, [leaf.numel() for leaf in optree.tree_leaves(solution)])),
        )
        if not isinstance(solution, torch.Tensor)
        else c.reshape(solution.shape)
    )


def _inputs(problem: Problem) -> tuple[Any, Any, Any]:
    params, data = problem.params(0), problem.data(0)
    args = problem.solver_args(params, data)
    solution = problem.solve(params, data)
    return solution, args, _cotangent(solution)


def _reference_vjp(problem: Problem, cotangent: Any) -> tuple[Any, ...]:
    """``c^T d theta*/d arg`` for every tensor leaf of every solver argument (classic autograd
    through the reference map), rebuilt per argument with None at non-tensor leaves."""
    params, data = problem.params(0), problem.data(0)
    params = optree.tree_map(lambda t: t.clone().requires_grad_(True), params)
    data = tuple(d.clone().requires_grad_(True) for d in data)
    args: Any = problem.solver_args(params, data)
    leaves: list[torch.Tensor] = optree.tree_leaves(args)
    out = ravel(problem.reference(params, data)) @ ravel(cotangent)
    grads = iter(torch.autograd.grad(out, leaves))
    return tuple(optree.tree_map(lambda _: next(grads), a) for a in args)


@problems
@SOLVES
def test_root_vjp_matches_reference(problem: Problem, use_default: bool) -> None:
    solution, args, cot = _inputs(problem)
    solve = None if use_default else problem.linear_solve
    grads = fi.root_vjp(problem.optimality, solution, args, cot, solve=solve)
    expected = _reference_vjp(problem, cot)
    assert len(grads) == len(args)
    for k, (g, e) in enumerate(zip(grads, expected, strict=True)):
        assert optree.tree_structure(g) == optree.tree_structure(e), f"argument {k}"
        assert_close(g, e, what=f"root_vjp argument {k}")


@problems
@SOLVES
def test_root_jvp_matches_reference(problem: Problem, use_default: bool) -> None:
    solution, args, _ = _inputs(problem)
    leaves, spec = optree.tree_flatten(args)
    tangent_leaves = [
        torch.linspace(0.5, -0.5, leaf.numel(), dtype=F64).reshape(leaf.shape) for leaf in leaves
    ]
    tangents: Any = optree.tree_unflatten(spec, tangent_leaves)
    solve = None if use_default else problem.linear_solve
    out = fi.root_jvp(problem.optimality, solution, args, tangents, solve=solve)
    assert optree.tree_structure(out) == optree.tree_structure(solution)

    def flat_reference(*flat: torch.Tensor) -> torch.Tensor:
        params, *data = optree.tree_unflatten(spec, list(flat))
        return ravel(problem.reference(params, tuple(data)))

    _, expected = torch.autograd.functional.jvp(  # type: ignore[no-untyped-call]
        flat_reference, tuple(leaves), tuple(tangent_leaves)
    )
    assert_close(ravel(out), expected, what="root_jvp")


@problems
def test_root_vjp_root_jvp_adjoint(problem: Problem) -> None:
    # <root_jvp(t), c> == sum_k <root_vjp(c)_k, t_k>: both are the same Jacobian.
    solution, args, cot = _inputs(problem)
    leaves, spec = optree.tree_flatten(args)
    t_leaves = [
        torch.cos(torch.arange(leaf.numel(), dtype=F64)).reshape(leaf.shape) for leaf in leaves
    ]
    tangents: Any = optree.tree_unflatten(spec, t_leaves)
    forward = fi.root_jvp(problem.optimality, solution, args, tangents, solve=fi.GMRES())
    backward: Any = fi.root_vjp(problem.optimality, solution, args, cot, solve=fi.GMRES())
    lhs = ravel(forward) @ ravel(cot)
    rhs = sum((g * t).sum() for g, t in zip(optree.tree_leaves(backward), t_leaves, strict=True))
    assert abs(float(lhs - rhs)) <= 1e-9 * max(1.0, abs(float(lhs)))


@problems
def test_root_vjp_agrees_with_decorated_backward(problem: Problem) -> None:
    params, data = problem.params(0), problem.data(0)
    solution, args, cot = _inputs(problem)
    grads = fi.root_vjp(problem.optimality, solution, args, cot, solve=problem.linear_solve)
    p = optree.tree_map(lambda t: t.clone().requires_grad_(True), params)
    out = problem.solve(p, data)
    g = torch.autograd.grad(ravel(out) @ ravel(cot), optree.tree_leaves(p))
    assert_close(list(g), optree.tree_leaves(grads[0]), tol=1e-12, what="same rule, same numbers")


@problems
def test_vmap_root_vjp_over_cotangents(problem: Problem) -> None:
    # vmap over a basis of cotangents: the rows of the Jacobian in the params.
    solution, args, _ = _inputs(problem)
    n = ravel(solution).numel()
    spec = optree.tree_structure(solution)
    sizes = [leaf.numel() for leaf in optree.tree_leaves(solution)]
    shapes = [leaf.shape for leaf in optree.tree_leaves(solution)]

    def row(e: torch.Tensor) -> torch.Tensor:
        parts = [p.reshape(s) for p, s in zip(torch.split(e, sizes), shapes, strict=True)]
        cot = optree.tree_unflatten(spec, parts)
        return ravel(fi.root_vjp(problem.optimality, solution, args, cot)[0])

    rows = vmap(row)(torch.eye(n, dtype=F64))
    from implicit_problems import reference_derivatives

    assert_close(rows, reference_derivatives(problem.name)["jacobian"], what="vmap(root_vjp)")


# --------------------------------------------------------------------------------------------
# Differentiating root_vjp / root_jvp themselves (ridge: w* = (X^T X + diag(lam))^{-1} X^T y)


def _ridge() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return RIDGE.params(0), *RIDGE.data(0)


def _implicit_w(lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w: torch.Tensor = RIDGE.solver(torch.zeros(4, dtype=F64), lam, X, y)
    return w


def test_root_vjp_differentiable_with_solution_fixed() -> None:
    # With the solution a constant w, root_vjp in lam is -w * (X^T X + diag(lam))^{-1} v: its
    # derivative in lam holds w fixed (a partial derivative), against Cholesky + autograd.
    lam, X, y = _ridge()
    w = _implicit_w(lam, X, y)
    v = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=F64)

    def via_root_vjp(lam: torch.Tensor) -> torch.Tensor:
        grad_lam: torch.Tensor = fi.root_vjp(ridge_optimality, w, (lam, X, y), v, solve=fi.CG())[0]
        return grad_lam

    def closed_form(lam: torch.Tensor) -> torch.Tensor:
        L = torch.linalg.cholesky(X.mT @ X + torch.diag(lam))
        return -w * torch.cholesky_solve(v[:, None], L)[:, 0]

    assert_close(via_root_vjp(lam), closed_form(lam), what="value")
    expected = torch.autograd.functional.jacobian(closed_form, lam)  # type: ignore[no-untyped-call]
    assert_close(jacrev(via_root_vjp)(lam), expected, what="jacrev(root_vjp)")
    assert_close(torch.func.jacfwd(via_root_vjp)(lam), expected, what="jacfwd(root_vjp)")


def test_root_vjp_differentiable_through_the_solution() -> None:
    # With w = w*(lam) itself implicit, d/dlam [v^T dw*/dlam] is the second derivative of v^T w*.
    lam, X, y = _ridge()
    v = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=F64)

    def via_root_vjp(lam: torch.Tensor) -> torch.Tensor:
        w = _implicit_w(lam, X, y)
        grad_lam: torch.Tensor = fi.root_vjp(ridge_optimality, w, (lam, X, y), v, solve=fi.CG())[0]
        return grad_lam

    def reference_second(lam: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.hessian(  # type: ignore[no-any-return, no-untyped-call]
            lambda lam_: RIDGE.reference(lam_, (X, y)) @ v, lam
        )

    assert_close(jacrev(via_root_vjp)(lam), reference_second(lam), what="d/dlam root_vjp")


def test_root_vjp_gradcheck() -> None:
    # In (lam, X, v), with the solution implicit in lam and X; float64 finite differences.
    lam, X, y = _ridge()

    def fn(
        lam: torch.Tensor, X: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = fi.root_vjp(ridge_optimality, _implicit_w(lam, X, y), (lam, X, y), v, solve=fi.CG())
        return g[0], g[1]

    inputs = (lam, X, torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=F64))
    assert torch.autograd.gradcheck(fn, tuple(t.clone().requires_grad_(True) for t in inputs))


def test_root_jvp_gradcheck() -> None:
    lam, X, y = _ridge()

    def fn(lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        zeros_x, zeros_y = torch.zeros_like(X), torch.zeros_like(y)
        return fi.root_jvp(
            ridge_optimality,
            _implicit_w(lam, X, y),
            (lam, X, y),
            (t, zeros_x, zeros_y),
            solve=fi.CG(),
        )

    t = torch.tensor([0.3, -0.1, 0.2, 1.0], dtype=F64)
    assert torch.autograd.gradcheck(
        fn, (lam.clone().requires_grad_(True), t.clone().requires_grad_(True))
    )


def test_root_jvp_linear_in_tangent() -> None:
    lam, X, y = _ridge()
    w = _implicit_w(lam, X, y)
    zeros = (torch.zeros_like(X), torch.zeros_like(y))
    jac = jacrev(
        lambda t: fi.root_jvp(ridge_optimality, w, (lam, X, y), (t, *zeros), solve=fi.CG())
    )(torch.zeros(4, dtype=F64))
    expected = torch.autograd.functional.jacobian(lambda lam_: RIDGE.reference(lam_, (X, y)), lam)  # type: ignore[no-untyped-call]
    assert_close(jac, expected, what="d root_jvp / d t")


def test_root_vjp_grad_in_cotangent_via_func_grad() -> None:
    # grad of a scalar of root_vjp in the cotangent: J applied to a vector.
    lam, X, y = _ridge()
    w = _implicit_w(lam, X, y)
    u = torch.tensor([0.2, 0.4, -0.6, 1.0], dtype=F64)
    g = grad(lambda v: fi.root_vjp(ridge_optimality, w, (lam, X, y), v, solve=fi.CG())[0] @ u)(
        torch.ones(4, dtype=F64)
    )
    expected = (
        torch.autograd.functional.jacobian(lambda lam_: RIDGE.reference(lam_, (X, y)), lam) @ u  # type: ignore[no-untyped-call]
    )
    assert_close(g, expected, what="d root_vjp / d v")


# --------------------------------------------------------------------------------------------
# Inputs


def test_root_vjp_non_tensor_arguments() -> None:
    def optimality(x: torch.Tensor, a: torch.Tensor, power: int, tag: str) -> torch.Tensor:
        assert power == 2
        assert tag == "scale"
        return x - a**power

    a = torch.tensor([1.5, -0.5], dtype=F64)
    grads = fi.root_vjp(optimality, a**2, (a, 2, "scale"), torch.ones(2, dtype=F64))
    assert grads[1] is None
    assert grads[2] is None
    assert_close(grads[0], 2 * a, tol=1e-12, what="d a^2 / d a")


def test_root_jvp_wrong_number_of_tangents() -> None:
    lam, X, y = _ridge()
    w = _implicit_w(lam, X, y)
    with pytest.raises(ValueError, match="tangent"):
        fi.root_jvp(ridge_optimality, w, (lam, X, y), (torch.ones(4, dtype=F64),))


def test_root_vjp_nan_cotangent() -> None:
    lam, X, y = _ridge()
    w = _implicit_w(lam, X, y)
    with pytest.raises(ValueError, match="NaN"):
        fi.root_vjp(ridge_optimality, w, (lam, X, y), torch.full((4,), float("nan"), dtype=F64))


def test_root_vjp_shape_mismatch() -> None:
    lam, X, y = _ridge()
    w = _implicit_w(lam, X, y)
    with pytest.raises(ValueError, match="shape"):
        fi.root_vjp(
            lambda w, lam, X, y: ridge_optimality(w, lam, X, y)[:2],
            w,
            (lam, X, y),
            torch.ones(4, dtype=F64),
        )


def test_root_vjp_zero_dim() -> None:
    # 0-d with the default solver: never a silent zero gradient (a TorchOpt defect).
    s, (c,) = CUBE.params(0), CUBE.data(0)
    x = (s / c) ** (1 / 3)
    gs, gc = fi.root_vjp(CUBE.optimality, x, (s, c), torch.ones((), dtype=F64))
    assert gs.shape == ()
    assert gc.shape == ()
    assert_close(gs, 1 / (3 * c * x**2), tol=1e-12, what="dx/ds")
    assert_close(gc, -(x**3) / (3 * c * x**2), tol=1e-12, what="dx/dc")

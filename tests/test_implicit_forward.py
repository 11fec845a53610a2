"""Forward mode through ``implicit_root`` / ``fixed_point``: jvp, jacfwd, hessian (forward over
reverse), jacrev(jacfwd), and the refusal of forward-over-forward (pytorch issue 197867)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from implicit_problems import (
    CUBE,
    IDS,
    PROBLEMS,
    RIDGE,
    Problem,
    assert_close,
    flat_params,
    flat_solution_fn,
    loss_fn,
    reference_derivatives,
)
from torch.func import grad, hessian, jacfwd, jacrev, jvp

F64 = torch.float64
problems = pytest.mark.parametrize("problem", PROBLEMS, ids=IDS)


def _setup(
    problem: Problem,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, Callable[[torch.Tensor], Any], tuple[Any, ...]]:
    ref = reference_derivatives(problem.name)
    v, unravel = flat_params(problem)
    return ref, v, unravel, problem.data(0)


def _direction(n: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.5, n, dtype=F64) + 0.1


@problems
def test_jvp(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    t = _direction(v.numel())
    out, tangent = jvp(flat_solution_fn(problem, data, unravel), (v,), (t,))  # type: ignore[misc]
    assert_close(out, ref["solution"], tol=1e-12, what="jvp primal")
    assert_close(tangent, ref["jacobian"] @ t, what="jvp tangent")


@problems
def test_jvp_in_pytree_params(problem: Problem) -> None:
    # Tangents with the structure of the params (dicts, tuples, 0-d leaves); output tangent with
    # the structure of the solution.
    from implicit_problems import ravel, tree_map, unraveler

    ref, v, unravel, data = _setup(problem)
    params = unravel(v)
    tangents = unraveler(params)(_direction(v.numel()))
    out, tangent = jvp(lambda p: problem.solve(p, data), (params,), (tangents,))  # type: ignore[misc]
    assert tree_map(lambda a: a.shape, tangent) == tree_map(lambda a: a.shape, out)
    assert_close(ravel(tangent), ref["jacobian"] @ _direction(v.numel()), what="pytree jvp")


@problems
def test_jacfwd(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    assert_close(
        jacfwd(flat_solution_fn(problem, data, unravel))(v), ref["jacobian"], what="jacfwd"
    )


@problems
def test_hessian(problem: Problem) -> None:
    # torch.func.hessian = jacfwd(jacrev(f)): forward over reverse.
    ref, v, unravel, data = _setup(problem)
    assert_close(
        hessian(loss_fn(problem, data, unravel))(v), ref["hessian"], tol=1e-8, what="hessian"
    )


@problems
def test_jacrev_jacfwd(problem: Problem) -> None:
    ref, v, unravel, data = _setup(problem)
    hess = jacrev(jacfwd(loss_fn(problem, data, unravel)))(v)
    assert_close(hess, ref["hessian"], tol=1e-8, what="jacrev(jacfwd)")


@problems
def test_jvp_of_grad(problem: Problem) -> None:
    # A Hessian-vector product as forward over reverse.
    ref, v, unravel, data = _setup(problem)
    t = _direction(v.numel())
    _, hvp = jvp(grad(loss_fn(problem, data, unravel)), (v,), (t,))  # type: ignore[misc]
    assert_close(hvp, ref["hessian"] @ t, tol=1e-8, what="jvp(grad)")


@problems
def test_gradcheck_forward_ad(problem: Problem) -> None:
    # Finite differences against the custom jvp rule (forward AD only).
    _, v, unravel, data = _setup(problem)
    fn = flat_solution_fn(problem, data, unravel)
    assert torch.autograd.gradcheck(
        fn, (v.clone().requires_grad_(True),), check_forward_ad=True, check_backward_ad=False
    )


@problems
def test_classic_forward_ad(problem: Problem) -> None:
    # torch.autograd.forward_ad dual numbers (not torch.func).
    import torch.autograd.forward_ad as fwAD

    ref, v, unravel, data = _setup(problem)
    t = _direction(v.numel())
    with fwAD.dual_level():
        out = flat_solution_fn(problem, data, unravel)(fwAD.make_dual(v, t))  # type: ignore[no-untyped-call]
        tangent = fwAD.unpack_dual(out).tangent  # type: ignore[no-untyped-call]
    assert_close(tangent, ref["jacobian"] @ t, what="forward_ad")


@problems
def test_jvp_with_zero_tangent_for_data(problem: Problem) -> None:
    # Tangents only on the data (params fixed): the derivative of theta* in the data.
    _, v, unravel, data = _setup(problem)
    params = unravel(v)
    t_data = tuple(torch.ones_like(d) * 0.3 for d in data)
    _, tangent = jvp(lambda *d: problem.solve(params, d), data, t_data)  # type: ignore[misc]
    if problem.name == "logistic":
        # argnums=1: X and y are constants of this solver: a zero tangent.
        assert_close(tangent, torch.zeros_like(tangent), tol=0.0, what="constant data")
        return
    _, expected = jvp(lambda *d: problem.reference(params, d), data, t_data)  # type: ignore[misc]
    # The reference's forward derivative (closed form via Cholesky or unrolled iterations, no
    # linalg.solve) is itself checked against classic autograd here:
    expected_rev = torch.autograd.functional.jvp(  # type: ignore[no-untyped-call]
        lambda *d: _flat(problem.reference(params, d)), data, t_data
    )[1]
    assert_close(_flat(expected), expected_rev, what="reference forward vs reverse")
    assert_close(_flat(tangent), expected_rev, what="jvp in the data")


def _flat(tree: object) -> torch.Tensor:
    from implicit_problems import ravel

    return ravel(tree)


# --------------------------------------------------------------------------------------------
# Forward over forward: refused, since torch 2.13 gets it wrong through any autograd.Function


@pytest.mark.parametrize("problem", [RIDGE, CUBE], ids=["ridge", "cube0d"])
def test_jacfwd_jacfwd_is_refused(problem: Problem) -> None:
    _, v, unravel, data = _setup(problem)
    with pytest.raises(NotImplementedError, match="forward-over-forward"):
        jacfwd(jacfwd(loss_fn(problem, data, unravel)))(v)


def test_jvp_of_jvp_is_refused() -> None:
    _, v, unravel, data = _setup(CUBE)
    fn = flat_solution_fn(CUBE, data, unravel)
    one = torch.ones_like(v)
    with pytest.raises(NotImplementedError, match="hessian"):
        jvp(lambda w: jvp(fn, (w,), (one,))[1], (v,), (one,))


def test_single_forward_level_inside_vmap_is_not_refused() -> None:
    # vmap(jvp) (and jacfwd, which is vmap over jvp) is one forward level: must not be refused.
    ref, v, unravel, data = _setup(RIDGE)
    fn = flat_solution_fn(RIDGE, data, unravel)
    basis = torch.eye(v.numel(), dtype=F64)
    cols = torch.func.vmap(lambda t: jvp(fn, (v,), (t,))[1])(basis)
    assert_close(cols.mT, ref["jacobian"], what="vmap(jvp)")


class _Cube(torch.autograd.Function):
    """A toy Function with a correct jvp rule written in torch ops: f(x) = x^3."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x**3

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)  # type: ignore[attr-defined]
        ctx.save_for_forward(x)  # type: ignore[attr-defined]

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 3 * x**2 * g

    @staticmethod
    def jvp(ctx: object, t: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 3 * x**2 * t


def test_toy_function_other_second_orders_are_right() -> None:
    # The control for the canary below: the toy rule itself is right.
    x = torch.tensor([1.5, -0.7], dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return _Cube.apply(x).sum()  # type: ignore[no-any-return, no-untyped-call]

    for second in (hessian(f), jacrev(jacrev(f)), jacrev(jacfwd(f))):
        assert_close(torch.diagonal(second(x)), 6 * x, tol=1e-12, what="toy second derivative")


@pytest.mark.xfail(
    strict=True,
    reason=(
        "upstream pytorch issue 197867: forward-over-forward through an autograd.Function "
        "gives wrong second derivatives on torch 2.13. When this XPASSes, torch is fixed: "
        "drop funcimplicit's refuse_forward_over_forward and test_jacfwd_jacfwd_is_refused."
    ),
)
def test_upstream_forward_over_forward_canary() -> None:
    x = torch.tensor([1.5, -0.7], dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return _Cube.apply(x).sum()  # type: ignore[no-any-return, no-untyped-call]

    second = torch.diagonal(jacfwd(jacfwd(f))(x))
    assert torch.allclose(second, 6 * x), f"jacfwd(jacfwd) gave {second}, expected {6 * x}"

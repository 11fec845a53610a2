"""Failure is never silent in ``implicit_root`` / ``fixed_point``: clear errors for bad argnums,
mismatched structures, NaN, captured tensors, unsolvable backward systems and bad solvers."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from implicit_problems import DEQ, RIDGE, assert_close, outer_loss, ridge_optimality
from torch.func import grad, jacfwd, jvp

import funcimplicit as fi

F64 = torch.float64


def _half_optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 2 * x - a  # x* = a / 2


def _half(argnums: Any = None, **kwargs: Any) -> Any:
    @fi.implicit_root(_half_optimality, argnums=argnums, **kwargs)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / 2

    return solver


def _a(requires_grad: bool = True) -> torch.Tensor:
    return torch.tensor([1.0, 4.0], dtype=F64, requires_grad=requires_grad)


ZEROS = torch.zeros(2, dtype=F64)


# --------------------------------------------------------------------------------------------
# argnums


@pytest.mark.parametrize("decorator", [fi.implicit_root, fi.fixed_point])
@pytest.mark.parametrize("argnums", [0, (0,), (1, 0)])
def test_argnums_zero_is_init(decorator: Any, argnums: Any) -> None:
    with pytest.raises(ValueError, match="init"):
        decorator(_half_optimality, argnums=argnums)


@pytest.mark.parametrize("argnums", [-1, (1, -2)])
def test_argnums_negative(argnums: Any) -> None:
    with pytest.raises(ValueError, match="argnums"):
        fi.implicit_root(_half_optimality, argnums=argnums)


@pytest.mark.parametrize("argnums", [1.0, "1", True, (1, 2.0), (None,), [False]])
def test_argnums_not_int(argnums: Any) -> None:
    with pytest.raises(TypeError, match="argnums"):
        fi.implicit_root(_half_optimality, argnums=argnums)


def test_argnums_empty() -> None:
    with pytest.raises(ValueError, match="argnums"):
        fi.implicit_root(_half_optimality, argnums=())


@pytest.mark.parametrize("argnums", [2, (1, 2), 5])
def test_argnums_out_of_range(argnums: Any) -> None:
    solver = _half(argnums)
    with pytest.raises(ValueError, match="out of range"):
        solver(ZEROS, _a())


def test_argnums_list_accepted() -> None:
    # A list is as good as a tuple (Sequence[int]); duplicates are harmless.
    solver = _half([1, 1])
    a = _a()
    (g,) = torch.autograd.grad(solver(ZEROS, a).sum(), a)
    assert_close(g, torch.full((2,), 0.5, dtype=F64), tol=1e-12, what="argnums=[1, 1]")


def test_missing_init() -> None:
    with pytest.raises(TypeError, match="init"):
        _half()()


# --------------------------------------------------------------------------------------------
# Structures and shapes


def test_optimality_shape_differs_from_solution() -> None:
    @fi.implicit_root(lambda x, a: (2 * x - a).sum())
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / 2

    with pytest.raises(ValueError, match="shape"):  # T is evaluated at the solution at once
        solver(ZEROS, _a())


def test_optimality_shape_differs_in_forward_mode() -> None:
    @fi.implicit_root(lambda x, a: torch.cat([x, a]))
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / 2

    with pytest.raises(ValueError, match="shape"):
        jvp(lambda a: solver(ZEROS, a), (_a(False),), (torch.ones(2, dtype=F64),))


def test_optimality_structure_differs_from_solution() -> None:
    @fi.implicit_root(lambda x, a: {"x": 2 * x - a})
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / 2

    with pytest.raises(ValueError, match="structure"):
        grad(lambda a: solver(ZEROS, a).sum())(_a(False))


def test_optimality_dtype_differs_from_solution() -> None:
    @fi.implicit_root(lambda x, a: (2 * x - a).float())
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / 2

    with pytest.raises(TypeError, match="float32"):
        solver(ZEROS, _a()).sum().backward()  # type: ignore[no-untyped-call]


def test_solver_output_structure_differs_from_init() -> None:
    @fi.implicit_root(_half_optimality)
    def solver(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor]:
        return (a / 2,)

    with pytest.raises(ValueError, match="structure"):
        solver(ZEROS, _a())


def test_solver_output_shape_differs_from_init() -> None:
    @fi.implicit_root(_half_optimality)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (a / 2)[None]

    with pytest.raises(ValueError, match="shape"):
        solver(ZEROS, _a())


@pytest.mark.parametrize(
    "output",
    [[1.0, 2.0], torch.tensor([1, 2]), torch.tensor([1 + 1j, 2j])],
    ids=["list", "int", "complex"],
)
def test_solver_output_not_real_floating(output: Any) -> None:
    @fi.implicit_root(_half_optimality)
    def solver(init: Any, a: torch.Tensor) -> Any:
        return output

    with pytest.raises(TypeError):
        solver(None, _a())


def test_has_aux_without_aux() -> None:
    solver = _half(has_aux=True)
    with pytest.raises(TypeError, match="has_aux"):
        solver(ZEROS, _a())


# --------------------------------------------------------------------------------------------
# NaN / Inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_solution(bad: float) -> None:
    @fi.implicit_root(_half_optimality)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.tensor([bad, 1.0], dtype=F64)

    with pytest.raises(ValueError, match="NaN"):
        solver(ZEROS, _a())


def test_nan_cotangent() -> None:
    x = _half()(ZEROS, _a())
    with pytest.raises(ValueError, match="cotangent"):
        x.backward(torch.tensor([float("nan"), 1.0], dtype=F64))


def test_nan_outer_loss_gradient() -> None:
    # log of a negative solution entry: the cotangent reaching the implicit rule is NaN.
    a = torch.tensor([-1.0, 4.0], dtype=F64, requires_grad=True)
    x = _half()(ZEROS, a)
    with pytest.raises(ValueError, match="cotangent"):
        torch.sqrt(x).sum().backward()  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------
# Captured tensors

_GLOBAL_SCALE = torch.tensor(2.0, dtype=F64, requires_grad=True)
_GLOBAL_CONSTANT = torch.tensor(2.0, dtype=F64)


def _global_optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return _GLOBAL_SCALE * x - a


def _global_constant_optimality(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return _GLOBAL_CONSTANT * x - a


def _sum_grad_of_scale(a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -a.sum() / scale**2  # d/ds sum(a / s), the closed form of the tests below


def test_closure_over_requires_grad_tensor_gets_its_gradient() -> None:
    # Captured tensors used to be refused; the rule now differentiates what T touches.
    scale = torch.tensor(2.0, dtype=F64, requires_grad=True)

    @fi.implicit_root(lambda x, a: scale * x - a)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / scale

    a = _a()
    solver(ZEROS, a).sum().backward()  # type: ignore[no-untyped-call]
    assert scale.grad is not None
    assert a.grad is not None
    assert_close(scale.grad, _sum_grad_of_scale(a.detach(), scale.detach()), 1e-12, "closure")
    assert_close(a.grad, torch.full((2,), 0.5, dtype=F64), tol=1e-12, what="explicit")


def test_global_requires_grad_tensor_gets_its_gradient() -> None:
    @fi.implicit_root(_global_optimality)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / _GLOBAL_SCALE

    a = _a(False)
    (g,) = torch.autograd.grad(solver(ZEROS, a).sum(), _GLOBAL_SCALE)
    assert_close(g, _sum_grad_of_scale(a, _GLOBAL_SCALE.detach()), 1e-12, "global")


def test_captured_constant_is_allowed() -> None:
    # A constant (no requires_grad, not traced) may be captured: its derivative is not wanted.
    @fi.implicit_root(_global_constant_optimality)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / 2

    a = _a()
    (g,) = torch.autograd.grad(solver(ZEROS, a).sum(), a)
    assert_close(g, torch.full((2,), 0.5, dtype=F64), tol=1e-12, what="captured constant")


def test_closure_over_tensor_traced_by_func_grad() -> None:
    # Inside torch.func.grad the captured tensor is the one being differentiated.
    def loss(scale: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        @fi.implicit_root(lambda x, a: scale * x - a)
        def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return a / scale

        return solver(ZEROS, a).sum()

    scale = torch.tensor(2.0, dtype=F64)
    got = grad(loss)(scale, _a(False))
    assert_close(got, _sum_grad_of_scale(_a(False), scale), 1e-12, "func.grad closure")


def test_fixed_point_closure_gets_its_gradient() -> None:
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)

    @fi.fixed_point(lambda z, a: w * z + a)
    def iterate(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a / (1 - w)

    a = _a(False)
    iterate(ZEROS, a).sum().backward()  # type: ignore[no-untyped-call]
    assert w.grad is not None
    assert_close(w.grad, a.sum() / (1 - w.detach()) ** 2, 1e-12, "fixed-point closure")


# --------------------------------------------------------------------------------------------
# The backward linear solve fails: warn (default) or raise, never a silent zero gradient


def _hard_ridge() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    # Features on very different scales: A = X^T X + diag(lam) is ill-conditioned, so CG with a
    # single iteration cannot reach the 1e-10 relative tolerance.
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    X = torch.randn(12, 4, dtype=F64, generator=gen) * torch.tensor(
        [1.0, 10.0, 100.0, 0.1], dtype=F64
    )
    y = torch.randn(12, dtype=F64, generator=gen)
    return torch.tensor([0.5, 0.7, 0.9, 1.1], dtype=F64), (X, y)


def _ridge_with(solve: Any) -> Callable[..., Any]:
    @fi.implicit_root(ridge_optimality, solve=solve)
    def solver(
        init: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        A = X.mT @ X + torch.diag(lam)
        return torch.cholesky_solve((X.mT @ y)[:, None], torch.linalg.cholesky(A))[:, 0]

    return solver


def test_backward_solve_not_converged_warns() -> None:
    lam, (X, y) = _hard_ridge()
    lam = lam.requires_grad_(True)
    solver = _ridge_with(fi.CG(maxiter=1))
    w = solver(torch.zeros(4, dtype=F64), lam, X, y)
    with pytest.warns(
        fi.ConvergenceWarning, match=r"residual norm \d\.\d+e[-+]\d+ > tolerance"
    ) as record:
        (g,) = torch.autograd.grad(outer_loss(w), lam)
    message = str(record[0].message)
    assert "1 iterations" in message or "after 1" in message, message
    assert "backward" in message, message
    # Whatever came back is the partial solve, not a silent zero.
    assert torch.isfinite(g).all()
    assert float(g.abs().max()) > 0


def test_backward_solve_not_converged_raises_in_strict_mode() -> None:
    lam, (X, y) = _hard_ridge()
    lam = lam.requires_grad_(True)
    solver = _ridge_with(fi.CG(maxiter=1, on_failure="raise"))
    w = solver(torch.zeros(4, dtype=F64), lam, X, y)
    with pytest.raises(fi.ConvergenceError, match="residual"):
        outer_loss(w).backward()  # type: ignore[no-untyped-call]
    assert lam.grad is None


def test_forward_mode_solve_not_converged_raises() -> None:
    lam, (X, y) = _hard_ridge()
    solver = _ridge_with(fi.CG(maxiter=1, on_failure="raise"))
    with pytest.raises(fi.ConvergenceError, match="residual"):
        jvp(
            lambda lam: solver(torch.zeros(4, dtype=F64), lam, X, y),
            (lam,),
            (torch.ones(4, dtype=F64),),
        )


def test_backward_solve_converges_with_enough_iterations() -> None:
    # The control for the tests above: the same problem with a sane solver is silent and right.
    lam, (X, y) = _hard_ridge()
    lam = lam.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (g,) = torch.autograd.grad(
            outer_loss(_ridge_with(fi.CG())(torch.zeros(4, dtype=F64), lam, X, y)), lam
        )
    lam_ref = lam.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(outer_loss(RIDGE.reference(lam_ref, (X, y))), lam_ref)
    assert_close(g, g_ref, tol=1e-8, what="converged gradient")


SINGULAR_SOLVERS = [
    fi.CG(),
    fi.GMRES(),
    fi.BiCGStab(),
    fi.NormalCG(),
    fi.Neumann(),
    fi.LU(),
    fi.Cholesky(),
]


@pytest.mark.parametrize("solve", SINGULAR_SOLVERS, ids=lambda s: type(s).__name__)
def test_singular_backward_system_reported(solve: Any) -> None:
    # T(x, a) = (x - a)^2 has A = dT/dx = 0 at the root x* = a: no implicit derivative exists.
    # Every solver must report it; a zero gradient must never come back silently.
    @fi.implicit_root(lambda x, a: (x - a) ** 2, solve=solve)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    a = _a()
    x = solver(ZEROS, a)
    with pytest.warns(fi.ConvergenceWarning):
        torch.autograd.grad(x.sum(), a)


@pytest.mark.parametrize("solve", SINGULAR_SOLVERS, ids=lambda s: type(s).__name__)
def test_singular_backward_system_raises_in_strict_mode(solve: Any) -> None:
    import dataclasses

    @fi.implicit_root(
        lambda x, a: (x - a) ** 2, solve=dataclasses.replace(solve, on_failure="raise")
    )
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    a = _a()
    with pytest.raises(fi.ConvergenceError):
        torch.autograd.grad(solver(ZEROS, a).sum(), a)


def test_cg_on_nonsymmetric_fixed_point_reported() -> None:
    # CG applied to the non-symmetric A = I - dF/dz of a DEQ: reported, not silently wrong.
    from implicit_problems import deq_map

    @fi.fixed_point(deq_map, solve=fi.CG(on_failure="raise"))
    def solver(z: torch.Tensor, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        for _ in range(300):  # 0.8^300 ~ 1e-29
            z = deq_map(z, params, x)
        return z

    params = DEQ.params(0)
    params["W"] = params["W"] * 2.0  # ||W|| = 0.8: strongly non-symmetric Jacobian
    (x,) = DEQ.data(0)
    v = torch.linspace(-1, 1, 4, dtype=F64)
    try:
        g = grad(lambda p: solver(torch.zeros(4, dtype=F64), p, x) @ v)(params)
    except fi.ConvergenceError as error:
        message = str(error)
    else:
        message = ""
    if message:  # reported: the message points to a solver for non-symmetric systems
        assert "GMRES" in message
        return
    # If CG happened to converge, the answer must then be right.
    ref = grad(lambda p: DEQ.reference(p, (x,)) @ v)(params)
    assert_close(g, ref, tol=1e-8, what="CG on a non-symmetric system")


# --------------------------------------------------------------------------------------------
# solve= must be a linear solver (a plain callable solve(matvec, b) is one since issue 15:
# see tests/test_custom_solvers.py)


@pytest.mark.parametrize("decorator", [fi.implicit_root, fi.fixed_point])
@pytest.mark.parametrize(
    "solve",
    ["cg", fi.CG, 1e-6, fi.Anderson()],
    ids=["str", "class-not-instance", "float", "inner-solver"],
)
def test_solve_not_a_solver(decorator: Any, solve: Any) -> None:
    with pytest.raises(TypeError, match="linear solver"):
        decorator(_half_optimality, solve=solve)


@pytest.mark.parametrize("decorator", [fi.implicit_root, fi.fixed_point])
def test_optimality_not_callable(decorator: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        decorator(torch.zeros(2))


# --------------------------------------------------------------------------------------------
# User tensors are not modified in place


def test_user_tensors_not_modified_in_place() -> None:
    params, data = RIDGE.params(0), RIDGE.data(0)
    lam = params.clone().requires_grad_(True)
    X, y = (d.clone() for d in data)
    init = torch.zeros(4, dtype=F64)
    before = [t.detach().clone() for t in (lam, X, y, init)]
    versions = [t._version for t in (lam, X, y, init)]
    w = RIDGE.solver(init, lam, X, y)
    outer_loss(w).backward()  # type: ignore[no-untyped-call]
    torch.func.hessian(lambda lam: outer_loss(RIDGE.solver(init, lam, X, y)))(lam.detach())
    for t, b, version in zip((lam, X, y, init), before, versions, strict=True):
        assert torch.equal(t.detach(), b)
        assert t._version == version, "a user tensor was modified in place"


def test_solution_is_not_an_alias_of_solver_output() -> None:
    # The returned solution may not share storage with what the solver returned: the user
    # writing into it must not corrupt a tensor the solver keeps (e.g. a warm-start cache).
    cache = {}

    @fi.implicit_root(_half_optimality)
    def solver(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        cache["x"] = a / 2
        return cache["x"]

    x = solver(ZEROS, _a())
    with torch.no_grad():
        x.add_(1.0)
    assert_close(cache["x"], torch.tensor([0.5, 2.0], dtype=F64), tol=0.0, what="solver's tensor")


def test_init_with_requires_grad_is_never_differentiated() -> None:
    init = torch.ones(2, dtype=F64, requires_grad=True)
    a = _a()
    x = _half()(init, a)
    gi, ga = torch.autograd.grad(x.sum(), (init, a), allow_unused=True)
    assert gi is None
    assert_close(ga, torch.full((2,), 0.5, dtype=F64), tol=1e-12, what="grad a")


def test_jacfwd_jacfwd_refused_for_fixed_point() -> None:
    params, data = DEQ.params(0), DEQ.data(0)
    with pytest.raises(NotImplementedError, match="forward-over-forward"):
        jacfwd(jacfwd(lambda b: outer_loss(DEQ.solve({**params, "b": b}, data))))(params["b"])

"""``fi.Normal(inner)``: least squares through any square solver, against dense float64.

The reference is the closed form ``x = (A^T A + r I)^{-1} A^T b`` (``torch.linalg.lstsq`` for
``r = 0``), differentiated by classic autograd only (``torch.autograd.functional``, never
``torch.func``, as in ``test_linear_solve_derivatives.py``); ``gradcheck`` (finite
differences) is the independent second reference. The systems have condition number <= ~30
(squared: <= ~1e3), the iterative inner solvers run with ``rtol = 1e-12``, so solutions and
derivatives agree to about 1e-10: the comparisons use ``rtol = 1e-8, atol = 1e-10``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from problems import F64
from torch.autograd.functional import jacobian as ref_jacobian

import funcimplicit as fi

RTOL, ATOL = 1e-8, 1e-10

# Every inner solver Normal must run; iterative ones to a tight tolerance (set on Normal).
INNERS: dict[str, tuple[Callable[[], fi.LinearSolverBase], float | None]] = {
    "CG": (fi.CG, 1e-12),
    "Cholesky": (fi.Cholesky, None),
    "LU": (fi.LU, None),
    "GMRES": (fi.GMRES, 1e-12),
}
INNER_IDS = list(INNERS)
# (m, n, ridge): overdetermined, square, overdetermined with Tikhonov, underdetermined with
# Tikhonov (A^T A is singular there: only ridge > 0 makes the problem well posed).
SHAPES = [(7, 4, 0.0), (5, 5, 0.0), (7, 4, 0.3), (3, 5, 0.5)]
SHAPE_IDS = [f"{m}x{n}-ridge{r}" for m, n, r in SHAPES]


def close(actual: Any, expected: Any) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def normal(name: str, ridge: float = 0.0) -> fi.Normal:
    make, rtol = INNERS[name]
    return fi.Normal(make(), rtol=rtol, ridge=ridge)


def problem(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A well-conditioned ``m x n`` matrix (singular values in [1, 3]) and a right-hand side."""
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, dtype=F64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=gen))
    k = min(m, n)
    s = torch.linspace(1.0, 3.0, k, dtype=F64)
    a = u[:, :k] @ torch.diag(s) @ v[:, :k].mT
    return a, torch.randn(m, dtype=F64, generator=gen)


def closed_form(a: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    # x = (A^T A + r I)^{-1} A^T b, differentiated by classic autograd.
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    x: torch.Tensor = torch.linalg.solve(a.mT @ a + ridge * eye, a.mT @ b)
    return x


def solve_with(solver: fi.Normal) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        init = torch.zeros(a.shape[-1], dtype=a.dtype)
        return fi.linear_solve(lambda v, mat: mat @ v, b, a, solve=solver, init=init)

    return solve


# --------------------------------------------------------------------------------------------
# Solution


@pytest.mark.parametrize(("m", "n", "ridge"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("inner", INNER_IDS)
def test_solution_matches_dense(inner: str, m: int, n: int, ridge: float) -> None:
    a, b = problem(m, n)
    x = solve_with(normal(inner, ridge))(a, b)
    assert x.shape == (n,)
    close(x, closed_form(a, b, ridge))
    if ridge == 0.0:
        close(x, torch.linalg.lstsq(a, b[:, None]).solution[:, 0])


@pytest.mark.parametrize("inner", INNER_IDS)
def test_direct_call_reports_normal_residual(inner: str) -> None:
    """A direct ``run`` solves the normal equations, its residual is theirs."""
    a, b = problem(7, 4)
    result = normal(inner, 0.3).run(lambda v: a @ v, b, torch.zeros(4, dtype=F64))
    assert bool(result.converged)
    close(result.solution, closed_form(a, b, 0.3))
    eye = torch.eye(4, dtype=F64)
    expected = torch.linalg.vector_norm(a.mT @ b - (a.mT @ a + 0.3 * eye) @ result.solution)
    torch.testing.assert_close(result.residual_norm, expected, rtol=1e-6, atol=1e-13)


# --------------------------------------------------------------------------------------------
# Derivatives in A and b: the implicit rule against classic autograd and finite differences


@pytest.mark.parametrize(("m", "n", "ridge"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("inner", INNER_IDS)
def test_jacobians_match_closed_form(inner: str, m: int, n: int, ridge: float) -> None:
    a, b = problem(m, n)
    solve = solve_with(normal(inner, ridge))
    expected = ref_jacobian(lambda a, b: closed_form(a, b, ridge), (a, b))  # type: ignore[no-untyped-call]
    close(torch.func.jacrev(solve, argnums=(0, 1))(a, b), expected)
    close(torch.func.jacfwd(solve, argnums=(0, 1))(a, b), expected)


@pytest.mark.parametrize(
    ("m", "n", "ridge"), [SHAPES[0], SHAPES[3]], ids=[SHAPE_IDS[0], SHAPE_IDS[3]]
)
@pytest.mark.parametrize("inner", INNER_IDS)
def test_gradcheck(inner: str, m: int, n: int, ridge: float) -> None:
    a, b = problem(m, n)
    leaves = (a.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(solve_with(normal(inner, ridge)), leaves)


def test_gradgradcheck_cholesky() -> None:
    a, b = problem(6, 3)
    leaves = (a.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradgradcheck(solve_with(normal("Cholesky", 0.2)), leaves)


@pytest.mark.parametrize("inner", INNER_IDS)
def test_module_parameters_get_exact_gradients(inner: str) -> None:
    """``A`` as an ``nn.Linear`` read by a closure: its weight gets the closed-form gradient."""
    a, b = problem(7, 4)
    layer = torch.nn.Linear(4, 7, bias=False, dtype=F64)
    with torch.no_grad():
        layer.weight.copy_(a)
    b.requires_grad_()
    init = torch.zeros(4, dtype=F64)
    x = fi.linear_solve(layer, b, solve=normal(inner, 0.3), init=init)
    weights = torch.arange(1.0, 5.0, dtype=F64)
    grads = torch.autograd.grad(x @ weights, (layer.weight, b))
    ref_a = a.clone().requires_grad_()
    ref_b = b.detach().clone().requires_grad_()
    expected = torch.autograd.grad(closed_form(ref_a, ref_b, 0.3) @ weights, (ref_a, ref_b))
    close(grads, expected)


# --------------------------------------------------------------------------------------------
# vmap: a batch of problems, each solved and differentiated on its own


@pytest.mark.parametrize("inner", INNER_IDS)
def test_vmap_grad_matches_per_element(inner: str) -> None:
    pairs = [problem(7, 4, seed) for seed in range(3)]
    a = torch.stack([p[0] for p in pairs])
    b = torch.stack([p[1] for p in pairs])
    solve = solve_with(normal(inner, 0.3))
    weights = torch.arange(1.0, 5.0, dtype=F64)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solve(a, b) @ weights

    xs = torch.func.vmap(solve)(a, b)
    grads = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(a, b)
    for i in range(3):
        ref_a = a[i].clone().requires_grad_()
        ref_b = b[i].clone().requires_grad_()
        x = closed_form(ref_a, ref_b, 0.3)
        close(xs[i], x.detach())
        expected = torch.autograd.grad(x @ weights, (ref_a, ref_b))
        close((grads[0][i], grads[1][i]), expected)


def test_gradcheck_under_vmap() -> None:
    pairs = [problem(6, 3, seed) for seed in range(2)]
    a = torch.stack([p[0] for p in pairs]).requires_grad_()
    b = torch.stack([p[1] for p in pairs]).requires_grad_()
    batched = torch.func.vmap(solve_with(normal("Cholesky", 0.1)))
    assert torch.autograd.gradcheck(batched, (a, b))


# --------------------------------------------------------------------------------------------
# NormalCG is Normal with a CG inside


def test_normal_cg_is_normal_of_cg() -> None:
    a, b = problem(7, 4)
    init = torch.zeros(4, dtype=F64)
    precondition = lambda v: v / 2.0  # noqa: E731
    old = fi.NormalCG(rtol=1e-12, ridge=0.3, maxiter=50, preconditioner=precondition)
    new = fi.Normal(fi.CG(maxiter=50, preconditioner=precondition), rtol=1e-12, ridge=0.3)
    assert isinstance(old, fi.Normal)
    assert old.inner == fi.CG(maxiter=50, preconditioner=precondition)
    assert "inner" not in repr(old)
    first, second = old.run(lambda v: a @ v, b, init), new.run(lambda v: a @ v, b, init)
    assert torch.equal(first.solution, second.solution)
    assert torch.equal(first.iterations, second.iterations)
    with pytest.raises(TypeError):
        fi.NormalCG(inner=fi.LU())  # type: ignore[call-arg]


def test_default_inner_is_cg() -> None:
    assert fi.Normal() == fi.Normal(fi.CG())
    assert fi.Normal(inner=fi.LU()).inner == fi.LU()


def test_failure_is_reported() -> None:
    """An inner solver that cannot finish is reported under Normal's ``on_failure``."""
    a, b = problem(7, 4)
    solver = fi.Normal(fi.CG(maxiter=1), on_failure="raise")
    with pytest.raises(fi.ConvergenceError, match="ridge > 0"):
        solver(lambda v: a @ v, b, init=torch.zeros(4, dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fi.Normal(fi.CG(maxiter=1)).run(lambda v: a @ v, b, torch.zeros(4, dtype=F64))
    assert not bool(result.converged)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("inner", "error", "match"),
    [
        (3, TypeError, r"Normal\(inner\): inner must be a linear solver.*received int.*subclass"),
        (fi.CG, TypeError, r"Normal\(inner\).*received the class CG.*fi\.Normal\(fi\.CG\(\)\)"),
        (
            fi.NormalCG(),
            ValueError,
            r"Normal\(inner\): inner must solve a square system.*NormalCG.*fi\.Normal\(fi\.CG",
        ),
        (
            fi.Normal(fi.LU()),
            ValueError,
            r"Normal\(inner\): inner must solve a square system.*received Normal",
        ),
        (
            fi.CG(ridge=0.5),
            ValueError,
            r"Normal\(inner\).*received an inner CG with ridge=0\.5.*fi\.Normal\(fi\.CG\(\), ridge",
        ),
        (
            fi.Cholesky(rtol=1e-3, on_failure="raise"),
            ValueError,
            r"Cholesky with rtol=0\.001, on_failure='raise'",
        ),
    ],
    ids=["int", "class", "NormalCG", "Normal", "ridge", "tolerances"],
)
def test_bad_inner(inner: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        fi.Normal(inner)


def test_non_square_without_init_says_so() -> None:
    a, b = problem(7, 4)
    with pytest.raises(ValueError, match="pass init with the shape of the solution"):
        fi.Normal(fi.Cholesky())(lambda v: a @ v, b)

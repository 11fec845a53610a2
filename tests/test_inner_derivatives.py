"""Derivatives of inner solutions (``solve_fixed_point``, ``solve_root``, ``minimize``).

The implicit derivative of ``value`` in ``args`` is compared with independent references: closed
forms (``dx*/dtheta = 1 / (1 + sin x*)`` for ``x = cos x + theta``, ``1 / (3 x^2)`` for a cube
root, classic autograd through the closed-form ridge solution), central finite differences of
the undifferentiated solver, and the "unrolled" derivative (``implicit=False``: autograd through
the iterations, which converges to the same value as the iterate converges). Every transform the
spec lists is exercised: ``.backward()``, ``grad``, ``vjp``, ``jacrev``, ``jvp``, ``jacfwd``,
``hessian`` (= ``jacfwd(jacrev)``), ``jacrev(jacrev)``, ``gradcheck`` and ``gradgradcheck``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import inner_methods
import mpmath  # type: ignore[import-untyped]
import pytest
import torch
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp

import funcimplicit as fi

F64 = torch.float64


# Tiny problems: one intra-op thread (the shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def central_difference(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float = 1e-5
) -> torch.Tensor:
    """Jacobian of ``f`` at ``x`` by central differences, shape ``f(x).shape + x.shape``."""
    x = x.detach()
    columns = []
    for i in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=x.dtype)
        e[i] = h
        e = e.reshape(x.shape)
        columns.append((f(x + e).detach() - f(x - e).detach()) / (2 * h))
    out = torch.stack(columns, dim=-1)
    return out.reshape((*out.shape[:-1], *x.shape))


def cos_map(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + theta


def cos_reference(theta: float) -> float:
    with mpmath.workdps(50):
        t = mpmath.mpf(theta)
        x = mpmath.mpf(0.5) + t
        for _ in range(200):
            x -= (x - mpmath.cos(x) - t) / (1 + mpmath.sin(x))
        return float(x)


METHODS = inner_methods.methods("fixed_point")


# --------------------------------------------------------------------------------------------
# x = cos(x) + theta: closed-form derivative


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("theta", [-0.4, 0.0, 0.5])
def test_cos_derivative_closed_form(name: str, theta: float) -> None:
    method = METHODS[name]
    x0 = torch.zeros((), dtype=F64)

    def solution(t: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(cos_map, x0, t, method=method).value

    x_ref = cos_reference(theta)
    expected = 1.0 / (1.0 + math.sin(x_ref))
    t = torch.tensor(theta, dtype=F64)
    # torch.func.grad, jacrev, jacfwd
    assert abs(float(grad(solution)(t)) - expected) <= 1e-9
    assert abs(float(jacrev(solution)(t)) - expected) <= 1e-9
    assert abs(float(jacfwd(solution)(t)) - expected) <= 1e-9
    # classic autograd
    t_leaf = t.clone().requires_grad_(True)
    solution(t_leaf).backward()  # type: ignore[no-untyped-call]
    assert t_leaf.grad is not None
    assert abs(float(t_leaf.grad) - expected) <= 1e-9
    # second derivative: d2x/dtheta2 = -cos x* (dx/dtheta)^2 / (1 + sin x*)
    second = -math.cos(x_ref) * expected**2 / (1.0 + math.sin(x_ref))
    assert abs(float(jacrev(jacrev(solution))(t)) - second) <= 1e-8
    assert abs(float(hessian(solution)(t)) - second) <= 1e-8


@pytest.mark.parametrize("name", list(METHODS))
def test_cos_derivative_finite_differences_and_unrolled(name: str) -> None:
    method = METHODS[name]
    x0 = torch.zeros((), dtype=F64)
    t = torch.tensor(0.3, dtype=F64)

    def solution(t: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(cos_map, x0, t, method=method).value

    implicit = float(grad(solution)(t))
    fd = float(central_difference(solution, t))
    assert abs(implicit - fd) <= 1e-7

    t_leaf = t.clone().requires_grad_(True)
    unrolled = fi.solve_fixed_point(cos_map, x0, t_leaf, method=method, implicit=False)
    assert bool(unrolled.converged)
    (g,) = torch.autograd.grad(unrolled.value, t_leaf)
    assert abs(float(g) - implicit) <= 1e-7


# --------------------------------------------------------------------------------------------
# Affine contractions: the Jacobian in c and J against a dense float64 reference


def affine(x: torch.Tensor, J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return J @ x + c


def affine_problem(n: int, radius: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randn(n, n, dtype=F64, generator=_gen(seed))
    c = torch.randn(n, dtype=F64, generator=_gen(seed + 1000))
    return radius * g / torch.linalg.eigvals(g).abs().max(), c


AFFINE_METHODS = inner_methods.methods("fixed_point")


@pytest.mark.parametrize("name", list(AFFINE_METHODS))
@pytest.mark.parametrize("radius", [0.5, 0.9])
def test_affine_jacobians(name: str, radius: float) -> None:
    n = 8
    J, c = affine_problem(n, radius, 0)
    method = AFFINE_METHODS[name]
    x0 = torch.zeros(n, dtype=F64)

    def solution(J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(affine, x0, J, c, method=method).value

    def reference(J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        solution: torch.Tensor = torch.linalg.solve(torch.eye(n, dtype=F64) - J, c)
        return solution

    ref_J, ref_c = torch.autograd.functional.jacobian(reference, (J, c))  # type: ignore[no-untyped-call]
    inv = torch.linalg.inv(torch.eye(n, dtype=F64) - J)
    torch.testing.assert_close(ref_c, inv)  # the reference's own sanity check
    tol: dict[str, Any] = {"rtol": 1e-7, "atol": 1e-8}
    jr_J, jr_c = jacrev(solution, argnums=(0, 1))(J, c)
    torch.testing.assert_close(jr_c, ref_c, **tol)
    torch.testing.assert_close(jr_J, ref_J, **tol)
    jf_c = jacfwd(solution, argnums=1)(J, c)
    torch.testing.assert_close(jf_c, ref_c, **tol)
    # a single jvp / vjp
    t_c = torch.randn(n, dtype=F64, generator=_gen(7))
    _, tangent = jvp(lambda c: solution(J, c), (c,), (t_c,))  # type: ignore[misc]
    torch.testing.assert_close(tangent, inv @ t_c, **tol)
    _, pullback = vjp(lambda c: solution(J, c), c)  # type: ignore[misc]
    (cot,) = pullback(t_c)
    torch.testing.assert_close(cot, inv.mT @ t_c, **tol)


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden"])
def test_affine_implicit_equals_unrolled_at_convergence(name: str) -> None:
    n = 8
    J, c = affine_problem(n, 0.9, 1)
    method = AFFINE_METHODS[name]
    x0 = torch.zeros(n, dtype=F64)
    w = torch.randn(n, dtype=F64, generator=_gen(3))

    def outer(J: torch.Tensor, c: torch.Tensor, implicit: bool) -> torch.Tensor:
        sol = fi.solve_fixed_point(affine, x0, J, c, method=method, implicit=implicit)
        assert bool(sol.converged)
        return (w * sol.value).sum() + (sol.value**2).sum()

    Jl, cl = J.clone().requires_grad_(True), c.clone().requires_grad_(True)
    g_unrolled = torch.autograd.grad(outer(Jl, cl, False), (Jl, cl))
    g_implicit = grad(outer, argnums=(0, 1))(J, c, True)
    for a, b in zip(g_implicit, g_unrolled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Root finding


def cube(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x**3 - a


@pytest.mark.parametrize(
    "method",
    # Broyden has no line search: started at 1 with H = I it overshoots; start it near the root
    # with an inverse-Jacobian scale of the right size (1 / (3 x^2) is 0.08 .. 0.5 here)
    [fi.Newton(), fi.Newton(solve=fi.LU()), fi.Broyden(scale=0.2)],
    ids=["Newton", "NewtonLU", "Broyden"],
)
def test_cube_root_derivatives(method: fi.InnerMethod) -> None:
    a = torch.tensor([8.0, 27.0, 0.5], dtype=F64)
    x0 = 1.1 * a ** (1.0 / 3.0) if isinstance(method, fi.Broyden) else torch.ones(3, dtype=F64)

    def solution(a: torch.Tensor) -> torch.Tensor:
        return fi.solve_root(cube, x0, a, method=method).value

    x = a ** (1.0 / 3.0)
    expected = torch.diag(1.0 / (3.0 * x**2))
    torch.testing.assert_close(jacrev(solution)(a), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(jacfwd(solution)(a), expected, rtol=1e-9, atol=1e-12)
    # d2x/da2 = -2 / (9 x^5) on the diagonal
    second = torch.zeros(3, 3, 3, dtype=F64)
    idx = torch.arange(3)
    second[idx, idx, idx] = -2.0 / (9.0 * x**5)
    torch.testing.assert_close(hessian(solution)(a), second, rtol=1e-7, atol=1e-10)


def coupled_system(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return A @ x + 0.3 * x**3 + torch.sin(x) - b


def test_coupled_system_derivatives_finite_differences() -> None:
    n = 5
    g = torch.randn(n, n, dtype=F64, generator=_gen(0))
    A = g @ g.mT / n + torch.eye(n, dtype=F64)
    b = torch.randn(n, dtype=F64, generator=_gen(1))
    x0 = torch.zeros(n, dtype=F64)

    def solution_b(b: torch.Tensor) -> torch.Tensor:
        return fi.solve_root(coupled_system, x0, A, b).value

    def solution_A(A: torch.Tensor) -> torch.Tensor:
        return fi.solve_root(coupled_system, x0, A, b).value

    torch.testing.assert_close(
        jacrev(solution_b)(b), central_difference(solution_b, b), rtol=1e-6, atol=1e-8
    )
    torch.testing.assert_close(
        jacfwd(solution_A)(A), central_difference(solution_A, A), rtol=1e-6, atol=1e-8
    )
    # the closed form of the first derivative: dx/db = (A + diag(0.9 x^2 + cos x))^{-1}
    x = solution_b(b)
    jac_x = A + torch.diag(0.9 * x**2 + torch.cos(x))
    torch.testing.assert_close(
        jacrev(solution_b)(b), torch.linalg.inv(jac_x), rtol=1e-9, atol=1e-11
    )


@pytest.mark.parametrize(
    "solve", [fi.LU(), fi.GMRES(), fi.BiCGStab()], ids=["LU", "GMRES", "BiCGStab"]
)
@pytest.mark.parametrize("backtracking", [True, False])
def test_newton_unrolled_matches_closed_form(solve: Any, backtracking: bool) -> None:
    """``implicit=False``: autograd through Newton's iterations (and its linear solves) gives,
    at convergence, the same derivative. The Newton system here is diagonal, so a Krylov
    solver meets an exact breakdown; its unrolled derivative must still be finite."""
    a = torch.tensor([8.0, 2.0], dtype=F64, requires_grad=True)
    method = fi.Newton(solve=solve, backtracking=backtracking)
    sol = fi.solve_root(cube, torch.ones(2, dtype=F64), a, method=method, implicit=False)
    (g_unrolled,) = torch.autograd.grad(sol.value.sum(), a)
    expected = 1.0 / (3.0 * a.detach() ** (2.0 / 3.0))
    torch.testing.assert_close(g_unrolled, expected, rtol=1e-8, atol=0.0)


# --------------------------------------------------------------------------------------------
# minimize: ridge (closed form) and logistic regression (finite differences)


def ridge_loss(
    w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-feature penalties ``lam`` (a vector), so the hypergradient is a vector."""
    return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * (lam * w**2).sum()


def ridge_data(seed: int, n: int = 20, d: int = 4) -> tuple[torch.Tensor, ...]:
    X = torch.randn(n, d, dtype=F64, generator=_gen(seed))
    y = torch.randn(n, dtype=F64, generator=_gen(seed + 1))
    Xv = torch.randn(n, d, dtype=F64, generator=_gen(seed + 2))
    yv = torch.randn(n, dtype=F64, generator=_gen(seed + 3))
    return X, y, Xv, yv


def ridge_closed_form(lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiated with classic autograd only (never under torch.func)."""
    H = X.mT @ X + torch.diag(lam)
    L = torch.linalg.cholesky(H)
    return torch.cholesky_solve((X.mT @ y)[:, None], L)[:, 0]


MINIMIZE_METHODS = {
    "NewtonCG": None,
    "NewtonCholesky": fi.Newton(solve=fi.Cholesky()),
    "GradientDescent": fi.GradientDescent(step_size=0.01, maxiter=5000),
}


@pytest.mark.parametrize("name", list(MINIMIZE_METHODS))
def test_ridge_hypergradient_jacobians_and_hessian(name: str) -> None:
    method = MINIMIZE_METHODS[name]
    X, y, Xv, yv = ridge_data(0)
    d = X.shape[1]
    lam = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=F64)
    w0 = torch.zeros(d, dtype=F64)
    kwargs: dict[str, Any] = {} if method is None else {"method": method}

    def solution(lam: torch.Tensor) -> torch.Tensor:
        return fi.minimize(ridge_loss, w0, lam, X, y, **kwargs).value

    def outer(lam: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((Xv @ solution(lam) - yv) ** 2).sum()

    def outer_reference(lam: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((Xv @ ridge_closed_form(lam, X, y) - yv) ** 2).sum()

    tol: dict[str, Any] = {"rtol": 1e-7, "atol": 1e-9}
    ref_jac = torch.autograd.functional.jacobian(lambda ll: ridge_closed_form(ll, X, y), lam)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(jacrev(solution)(lam), ref_jac, **tol)
    torch.testing.assert_close(jacfwd(solution)(lam), ref_jac, **tol)
    ref_grad = torch.autograd.functional.jacobian(outer_reference, lam)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(grad(outer)(lam), ref_grad, **tol)
    ref_hess = torch.autograd.functional.hessian(outer_reference, lam)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(hessian(outer)(lam), ref_hess, **tol)
    torch.testing.assert_close(jacrev(jacrev(outer))(lam), ref_hess, **tol)
    torch.testing.assert_close(jacrev(jacfwd(outer))(lam), ref_hess, **tol)
    # classic .backward()
    lam_leaf = lam.clone().requires_grad_(True)
    outer(lam_leaf).backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(lam_leaf.grad, ref_grad, **tol)


def test_ridge_derivatives_in_data_args() -> None:
    """Every tensor arg gets implicit derivatives, not only the regularization."""
    X, y, _, _ = ridge_data(1)
    lam = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=F64)
    w0 = torch.zeros(4, dtype=F64)

    def solution(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fi.minimize(ridge_loss, w0, lam, X, y).value

    ref_X, ref_y = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
        lambda X, y: ridge_closed_form(lam, X, y), (X, y)
    )
    j_X, j_y = jacrev(solution, argnums=(0, 1))(X, y)
    torch.testing.assert_close(j_X, ref_X, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(j_y, ref_y, rtol=1e-7, atol=1e-9)


def logistic_loss(
    w: torch.Tensor, log_lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    logits = X @ w
    penalty = 0.5 * (torch.exp(log_lam) * w**2).sum()
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + penalty


def logistic_data(seed: int, n: int = 60, d: int = 4) -> tuple[torch.Tensor, ...]:
    X = torch.randn(n, d, dtype=F64, generator=_gen(seed))
    w_true = torch.randn(d, dtype=F64, generator=_gen(seed + 1))
    y = (torch.rand(n, dtype=F64, generator=_gen(seed + 2)) < torch.sigmoid(X @ w_true)).to(F64)
    Xv = torch.randn(n, d, dtype=F64, generator=_gen(seed + 3))
    yv = (torch.rand(n, dtype=F64, generator=_gen(seed + 4)) < torch.sigmoid(Xv @ w_true)).to(F64)
    return X, y, Xv, yv


@pytest.mark.parametrize(
    "method",
    [
        None,
        fi.Newton(solve=fi.LU()),
        fi.GradientDescent(step_size=2.0, backtracking=True, maxiter=3000),
    ],
    ids=["NewtonCG", "NewtonLU", "GD_backtracking"],
)
def test_logistic_hypergradient_finite_differences(method: fi.InnerMethod | None) -> None:
    X, y, Xv, yv = logistic_data(0, d=3)
    log_lam = torch.tensor([-2.0, -1.0, -3.0], dtype=F64)
    w0 = torch.zeros(3, dtype=F64)
    kwargs: dict[str, Any] = {} if method is None else {"method": method}

    def outer(log_lam: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        w = fi.minimize(logistic_loss, w0, log_lam, X, y, **kwargs).value
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w, yv)

    # The finite-difference reference divides the solution's error by 2h: it needs the inner
    # problem solved to full precision, by dense Newton at a tight tolerance.
    precise = fi.Newton(solve=fi.LU(), rtol=1e-15, atol=1e-15, on_failure="ignore")
    fd = central_difference(lambda ll: outer(ll, method=precise), log_lam, h=1e-5)
    torch.testing.assert_close(
        grad(lambda ll: outer(ll, **kwargs))(log_lam), fd, rtol=1e-6, atol=1e-9
    )
    if method is None:
        # the Hessian of the outer loss: finite differences of the implicit gradient
        fd_hess = central_difference(grad(lambda ll: outer(ll, method=precise)), log_lam, h=1e-4)
        torch.testing.assert_close(hessian(outer)(log_lam), fd_hess, rtol=1e-5, atol=1e-7)


def test_logistic_implicit_equals_unrolled_gradient_descent() -> None:
    """GD on a strongly convex loss: the unrolled derivative converges to the implicit one."""
    X, y, Xv, yv = logistic_data(1)
    log_lam = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=F64)
    w0 = torch.zeros(4, dtype=F64)
    method = fi.GradientDescent(step_size=1.0, maxiter=5000)

    def outer(log_lam: torch.Tensor, implicit: bool) -> torch.Tensor:
        w = fi.minimize(logistic_loss, w0, log_lam, X, y, method=method, implicit=implicit).value
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w, yv)

    leaf = log_lam.clone().requires_grad_(True)
    (g_unrolled,) = torch.autograd.grad(outer(leaf, False), leaf)
    torch.testing.assert_close(grad(outer)(log_lam, True), g_unrolled, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------------
# A DEQ-like layer: second order against a plain-torch unrolled reference


def deq(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.tanh(W @ z + b)


def deq_problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randn(n, n, dtype=F64, generator=_gen(seed))
    W = 0.7 * g / torch.linalg.matrix_norm(g, 2)
    b = torch.randn(n, dtype=F64, generator=_gen(seed + 1))
    return W, b


def deq_unrolled_reference(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain torch: 150 iterations of a 0.7-contraction (value and derivatives to ~1e-20)."""
    z = torch.zeros(b.shape[0], dtype=F64)
    for _ in range(150):
        z = torch.tanh(W @ z + b)
    return z


@pytest.mark.parametrize("name", ["Anderson", "Broyden", "Newton"])
def test_deq_hessian_against_unrolled_plain_torch(name: str) -> None:
    n = 5
    W, b = deq_problem(n, 0)
    method = METHODS[name]
    z0 = torch.zeros(n, dtype=F64)
    v = torch.randn(n, dtype=F64, generator=_gen(9))

    def outer(b: torch.Tensor) -> torch.Tensor:
        z = fi.solve_fixed_point(deq, z0, W, b, method=method).value
        return (v * z).sum() + 0.5 * (z**2).sum()

    def outer_ref(b: torch.Tensor) -> torch.Tensor:
        z = deq_unrolled_reference(W, b)
        return (v * z).sum() + 0.5 * (z**2).sum()

    torch.testing.assert_close(
        grad(outer)(b),
        torch.autograd.functional.jacobian(outer_ref, b),  # type: ignore[no-untyped-call]
        rtol=1e-8,
        atol=1e-10,
    )
    ref_hess = torch.autograd.functional.hessian(outer_ref, b)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(hessian(outer)(b), ref_hess, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(jacrev(jacrev(outer))(b), ref_hess, rtol=1e-7, atol=1e-9)


def test_gradcheck_and_gradgradcheck() -> None:
    n = 2
    W, b = deq_problem(n, 2)
    z0 = torch.zeros(n, dtype=F64)

    def solution(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(deq, z0, W, b, method=fi.Anderson(rtol=1e-12, atol=1e-12)).value

    inputs = (W.clone().requires_grad_(True), b.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(solution, inputs)
    assert torch.autograd.gradgradcheck(solution, inputs)


# --------------------------------------------------------------------------------------------
# Pytrees: dict args and dict solutions; non-tensor args pass through


def dict_map(
    x: dict[str, torch.Tensor], p: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """Coupled leaves: each output leaf reads both input leaves."""
    u, v = x["u"], x["v"]
    return {
        "u": scale * torch.tanh(p["A"] @ u + v.sum() * p["c"]),
        "v": scale * torch.sin(p["B"] @ v + u.mean()),
    }


def test_dict_solution_and_dict_args_derivatives() -> None:
    p = {
        "A": 0.5 * torch.randn(3, 3, dtype=F64, generator=_gen(0)) / 3,
        "B": 0.5 * torch.randn(2, 2, dtype=F64, generator=_gen(1)) / 2,
        "c": torch.randn(3, dtype=F64, generator=_gen(2)),
    }
    init = {"u": torch.zeros(3, dtype=F64), "v": torch.zeros(2, dtype=F64)}
    weights = {
        "u": torch.tensor([1.0, -2.0, 0.5], dtype=F64),
        "v": torch.tensor([0.3, 1.5], dtype=F64),
    }

    def outer(c: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        sol = fi.solve_fixed_point(dict_map, init, {"A": A, "B": p["B"], "c": c}, 0.9)
        return sum((weights[k] * sol.value[k]).sum() for k in ("u", "v"))  # type: ignore[return-value]

    g_c, g_A = grad(outer, argnums=(0, 1))(p["c"], p["A"])
    torch.testing.assert_close(
        g_c, central_difference(lambda c: outer(c, p["A"]), p["c"]), rtol=1e-6, atol=1e-9
    )
    torch.testing.assert_close(
        g_A, central_difference(lambda A: outer(p["c"], A), p["A"]), rtol=1e-6, atol=1e-9
    )

    # grad with respect to the whole dict argument
    def outer_tree(params: dict[str, torch.Tensor]) -> torch.Tensor:
        sol = fi.solve_fixed_point(dict_map, init, params, 0.9)
        return sum((weights[k] * sol.value[k]).sum() for k in ("u", "v"))  # type: ignore[return-value]

    g_tree = grad(outer_tree)(p)
    assert set(g_tree) == {"A", "B", "c"}
    torch.testing.assert_close(g_tree["c"], g_c)
    torch.testing.assert_close(g_tree["A"], g_A)
    fd_B = central_difference(lambda B: outer_tree({"A": p["A"], "B": B, "c": p["c"]}), p["B"])
    torch.testing.assert_close(g_tree["B"], fd_B, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "solve",
    [fi.GMRES(), fi.BiCGStab(), fi.Neumann(maxiter=500), fi.LU()],
    ids=["GMRES", "BiCGStab", "Neumann", "LU"],
)
def test_backward_linear_solver_choice(solve: Any) -> None:
    """The ``solve=`` linear solver of the implicit rule does not change the derivative."""
    n = 6
    W, b = deq_problem(n, 4)
    z0 = torch.zeros(n, dtype=F64)

    def solution(b: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(deq, z0, W, b, solve=solve).value

    ref = torch.autograd.functional.jacobian(lambda b: deq_unrolled_reference(W, b), b)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(jacrev(solution)(b), ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(jacfwd(solution)(b), ref, rtol=1e-8, atol=1e-10)


def test_no_derivative_without_implicit_args_requiring_grad() -> None:
    """Plain eager call: the value is a tensor that does not require grad."""
    sol = fi.solve_fixed_point(cos_map, torch.zeros((), dtype=F64), torch.tensor(0.1, dtype=F64))
    assert not sol.value.requires_grad

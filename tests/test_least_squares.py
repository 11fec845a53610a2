"""``fi.least_squares`` with ``GaussNewton`` and ``LevenbergMarquardt``, against references
computed without the library: a dense float64 Gauss-Newton iteration written here (explicit
Jacobian, ``torch.linalg.lstsq``), central finite differences of that reference solution,
and a Python loop for ``vmap``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

import funcimplicit as fi

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {
    "GaussNewton": fi.GaussNewton(),
    "GaussNewton_plain": fi.GaussNewton(backtracking=False),
    "LevenbergMarquardt": fi.LevenbergMarquardt(),
    "GaussNewton_LU": fi.GaussNewton(solve=fi.LU()),
}


def exp_residual(p: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fit ``y ~ a exp(b t) + c``."""
    return p[0] * torch.exp(p[1] * t) + p[2] - y


def exp_data(seed: int, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Data with noise: the residual at the fit is far from zero (a non-zero residual problem)."""
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    t = torch.linspace(0, 2, 12, dtype=F64)
    y = 2.0 * torch.exp(-1.3 * t) + 0.5 + noise * torch.randn(12, dtype=F64, generator=g)
    return t, y


def dense_gauss_newton(t: torch.Tensor, y: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """Gauss-Newton with the Jacobian written out and each step an lstsq, to rounding."""
    p = init.clone()
    for _ in range(200):
        a, b = p[0], p[1]
        e = torch.exp(b * t)
        J = torch.stack([e, a * t * e, torch.ones_like(t)], dim=1)
        r = a * e + p[2] - y
        step = torch.linalg.lstsq(J, -r[:, None]).solution[:, 0]
        p = p + step
        if float(step.abs().max()) < 1e-15:
            break
    return p


def central_difference(fn: Any, x: torch.Tensor, h: float) -> torch.Tensor:
    cols = []
    for i in range(x.numel()):
        e = torch.zeros_like(x).reshape(-1)
        e[i] = h
        e = e.reshape(x.shape)
        cols.append((fn(x + e) - fn(x - e)) / (2 * h))
    return torch.stack(cols, dim=-1)


INIT = torch.tensor([1.0, -1.0, 0.0], dtype=F64)


@pytest.mark.parametrize("name", list(METHODS))
def test_solution_matches_dense_gauss_newton(name: str) -> None:
    t, y = exp_data(0)
    sol = fi.least_squares(exp_residual, INIT, t, y, method=METHODS[name])
    ref = dense_gauss_newton(t, y, INIT)
    assert bool(sol.converged)
    # The solve stops on the gradient (||J^T r|| <= 1e-10 ||p||), which bounds the error in p
    # by ||g|| / lambda_min(H) with H the full Hessian of 0.5 ||r||^2 (written out here).
    H = torch.func.hessian(lambda p: 0.5 * (exp_residual(p, t, y) ** 2).sum())(ref)
    lambda_min = float(torch.linalg.eigvalsh(H)[0])
    assert lambda_min > 0
    bound = 1.01 * float(sol.tolerance) / lambda_min + 1e-14
    assert float((sol.value - ref).norm()) <= bound
    r = exp_residual(ref, t, y)
    assert float(r.norm()) > 0.3  # the residual does not vanish: a non-zero residual problem
    # residual_norm is ||J^T r||, recomputed here from the written-out Jacobian
    e = torch.exp(sol.value[1] * t)
    J = torch.stack([e, sol.value[0] * t * e, torch.ones_like(t)], dim=1)
    g = J.T @ exp_residual(sol.value, t, y)
    torch.testing.assert_close(sol.residual_norm, g.norm(), rtol=1e-3, atol=1e-13)


@pytest.mark.parametrize("name", ["GaussNewton", "LevenbergMarquardt"])
def test_derivative_in_data_is_exact_for_nonzero_residual(name: str) -> None:
    """d p* / d y against central differences of the dense reference. The rule must use the
    full Hessian J^T J + sum r_i Hess r_i: the Gauss-Newton matrix alone is measurably off
    here, as the last check shows (so this test can tell the two apart)."""
    t, y = exp_data(1)

    def solution(y: torch.Tensor) -> torch.Tensor:
        return fi.least_squares(exp_residual, INIT, t, y, method=METHODS[name]).value

    jac = jacrev(solution)(y)
    fd = central_difference(lambda v: dense_gauss_newton(t, v, INIT), y, 1e-6)
    torch.testing.assert_close(jac, fd, rtol=1e-6, atol=1e-8)

    # forward mode, along a random direction
    direction = torch.randn(
        12, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(5)
    )
    tangent = jvp(solution, (y,), (direction,))[1]
    torch.testing.assert_close(tangent, fd @ direction, rtol=1e-6, atol=1e-8)

    # what the Gauss-Newton matrix alone would give: -(J^T J)^{-1} J^T dr/dy, dr/dy = -I
    p = solution(y).detach()
    e = torch.exp(p[1] * t)
    J = torch.stack([e, p[0] * t * e, torch.ones_like(t)], dim=1)
    gauss_newton_only = torch.linalg.solve(J.T @ J, J.T)
    assert float((gauss_newton_only - fd).abs().max()) > 1e-3


def test_vmap_grad_equals_python_loop() -> None:
    t, _ = exp_data(0)
    ys = torch.stack([exp_data(s)[1] for s in range(3)])

    def outer(y: torch.Tensor) -> torch.Tensor:
        p = fi.least_squares(exp_residual, INIT, t, y, method=fi.LevenbergMarquardt()).value
        return p[0] + p[1] ** 2

    def iterations(y: torch.Tensor) -> torch.Tensor:
        return fi.least_squares(exp_residual, INIT, t, y, method=fi.LevenbergMarquardt()).iterations

    batched = vmap(grad(outer))(ys)
    batched_iterations = vmap(iterations)(ys)
    for i in range(3):
        torch.testing.assert_close(batched[i], grad(outer)(ys[i]), rtol=1e-9, atol=1e-11)
        assert int(batched_iterations[i]) == int(iterations(ys[i]))


def test_levenberg_marquardt_far_start_and_never_increases() -> None:
    """LM from the classic Rosenbrock start: rejected steps leave x in place, so L never
    rises (checked through truncated runs, which repeat the same first iterations)."""

    def r(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    init = torch.tensor([-1.2, 1.0], dtype=F64)
    values = []
    for k in range(1, 25):
        method = fi.LevenbergMarquardt(maxiter=k, on_failure="ignore")
        x = fi.least_squares(r, init, method=method, implicit=False).value
        values.append(float((r(x) ** 2).sum()))
    assert all(b <= a for a, b in itertools.pairwise(values))
    sol = fi.least_squares(r, init, method=fi.LevenbergMarquardt())
    assert bool(sol.converged)
    torch.testing.assert_close(sol.value, torch.ones(2, dtype=F64), rtol=1e-8, atol=1e-8)


def test_unrolled_and_other_methods_agree_with_implicit() -> None:
    t, y = exp_data(2)
    precise = fi.GaussNewton(rtol=1e-13, atol=1e-13, on_failure="ignore")

    def solution(y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return fi.least_squares(exp_residual, INIT, t, y, **kwargs).value

    implicit = jacrev(lambda v: solution(v, method=precise))(y)
    unrolled = jacrev(lambda v: solution(v, method=precise, implicit=False))(y)
    # Gauss-Newton contracts only linearly on a non-zero residual problem, and the
    # unrolled derivative converges with it: a few digits, not rounding.
    torch.testing.assert_close(unrolled, implicit, rtol=1e-4, atol=1e-6)
    via_lbfgs = jacrev(lambda v: solution(v, method=fi.LBFGS()))(y)
    torch.testing.assert_close(via_lbfgs, implicit, rtol=1e-6, atol=1e-8)


def test_pytree_parameters_and_residuals() -> None:
    """Parameters as a dict and residuals as a tuple of differently shaped tensors."""

    def r(p: dict[str, torch.Tensor], t: torch.Tensor, y: torch.Tensor) -> Any:
        fit = p["a"] * torch.exp(p["b"] * t) + p["c"] - y
        return (fit[:6], fit[6:].reshape(2, 3))

    t, y = exp_data(0)
    init = {"a": INIT[0].clone(), "b": INIT[1].clone(), "c": INIT[2].clone()}
    sol = fi.least_squares(r, init, t, y)
    ref = dense_gauss_newton(t, y, INIT)
    torch.testing.assert_close(
        torch.stack([sol.value["a"], sol.value["b"], sol.value["c"]]), ref, rtol=1e-9, atol=1e-10
    )


def test_bad_input_errors() -> None:
    t, y = exp_data(0)
    with pytest.raises(
        TypeError,
        match=r"minimize\(objective, init, \*args\): method GaussNewton .* fi.least_squares",
    ):
        fi.minimize(lambda x: (x**2).sum(), torch.ones(2, dtype=F64), method=fi.GaussNewton())
    with pytest.raises(TypeError, match=r"solve_root.*LevenbergMarquardt"):
        fi.solve_root(lambda x: x, torch.ones(2, dtype=F64), method=fi.LevenbergMarquardt())
    with pytest.raises(ValueError, match=r"LevenbergMarquardt: damping must be a number > 0"):
        fi.LevenbergMarquardt(damping=0.0)
    with pytest.raises(
        TypeError, match=r"GaussNewton\(solve=\.\.\.\): solve must be a linear solver"
    ):
        fi.GaussNewton(solve="cg")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"least_squares\(residual_fn, init, \*args\): expected "
        r"residual_fn\(x, \*args\) to hold real floating-point",
    ):
        fi.least_squares(lambda p, t: (p[0] * t).to(torch.int64), INIT, t)
    with pytest.raises(TypeError, match=r"dtype and device of init"):
        fi.least_squares(lambda p, t: (p[0] * t).float(), INIT, t)
    with pytest.raises(fi.ConvergenceError, match=r"least_squares.* with GaussNewton: did not"):
        fi.least_squares(
            exp_residual, INIT, t, y, method=fi.GaussNewton(maxiter=1, on_failure="raise")
        )


def test_second_derivative_matches_second_differences_of_reference() -> None:
    """d^2 b* / ds^2 for data moved to y + s v (second order through the rule, which keeps
    the residual's second derivatives), against second central differences of the reference."""
    t, y = exp_data(1)
    v = torch.randn(
        12, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(9)
    )

    def rate(s: torch.Tensor) -> torch.Tensor:
        data = y + s * v
        return fi.least_squares(exp_residual, INIT, t, data, method=fi.GaussNewton()).value[1]

    h = 1e-3

    def ref(s: float) -> torch.Tensor:
        return dense_gauss_newton(t, y + s * v, INIT)[1]

    second = (ref(h) - 2 * ref(0.0) + ref(-h)) / h**2
    assert abs(float(second)) > 1e-2  # a curved dependence: the check means something
    # truncation O(h^2) ~ 1e-6 relative at most here; rounding 1e-16 / h^2 = 1e-10
    torch.testing.assert_close(
        torch.func.hessian(rate)(torch.tensor(0.0, dtype=F64)), second, rtol=1e-5, atol=1e-8
    )

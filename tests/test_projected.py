"""``fi.ProjectedGradient`` and ``fi.projections`` against references computed without the
library: box- and simplex-constrained quadratics solved by enumerating active sets (a small
dense KKT solve per candidate), closed forms for the ball, central finite differences of the
enumerated solution for derivatives (at points checked to be non-degenerate), and a Python
loop for ``vmap``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

import funcimplicit as fi
from funcimplicit import projections

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
MARGIN = 1e-3  # strict complementarity margin for a non-degenerate reference


def spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    A = torch.randn(n, n, dtype=F64, generator=g)
    return A @ A.T + 0.5 * torch.eye(n, dtype=F64)


def quadratic(x: torch.Tensor, Q: torch.Tensor, c: torch.Tensor, *_: Any) -> torch.Tensor:
    return 0.5 * x @ Q @ x + c @ x


def box_qp_reference(
    Q: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """min 0.5 x'Qx + c'x on lo <= x <= hi by trying every assignment of each coordinate to
    free / at lower / at upper, keeping the one that meets the KKT conditions. Also returns
    the complementarity margin (distance of free coordinates from their bounds, size of the
    active multipliers): positive means non-degenerate."""
    n = c.shape[0]
    found = []
    for states in itertools.product((0, 1, 2), repeat=n):
        x = torch.where(
            torch.tensor(states) == 1, lo, torch.where(torch.tensor(states) == 2, hi, 0.0)
        )
        free = torch.tensor([s == 0 for s in states])
        if free.any():
            Qff = Q[free][:, free]
            rhs = -(c[free] + Q[free][:, ~free] @ x[~free])
            x = x.clone()
            x[free] = torch.linalg.solve(Qff, rhs)
        g = Q @ x + c
        margins = [
            min(float(x[i] - lo[i]), float(hi[i] - x[i]))
            if s == 0
            else (float(g[i]) if s == 1 else float(-g[i]))
            for i, s in enumerate(states)
        ]
        if min(margins) >= -1e-12:
            found.append((x, min(margins)))
    assert len(found) == 1, "a strictly convex QP has one KKT point"
    return found[0]


def simplex_qp_reference(
    Q: torch.Tensor, c: torch.Tensor, total: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """min 0.5 x'Qx + c'x on {x >= 0, sum x = total} by trying every support S: solve
    [Q_SS 1; 1' 0][x_S; nu] = [-c_S; total], keep the one with x_S > 0 and multipliers
    g_i + nu >= 0 off S."""
    n = c.shape[0]
    found = []
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            S = list(support)
            K = torch.zeros(size + 1, size + 1, dtype=F64)
            K[:size, :size] = Q[S][:, S]
            K[:size, size] = 1
            K[size, :size] = 1
            rhs = torch.cat([-c[S], total.reshape(1)])
            sol = torch.linalg.solve(K, rhs)
            x = torch.zeros(n, dtype=F64)
            x[S] = sol[:size]
            nu = sol[size]
            g = Q @ x + c
            margins = [float(x[i]) if i in S else float(g[i] + nu) for i in range(n)]
            if min(margins) >= -1e-12:
                found.append((x, min(margins)))
    assert len(found) == 1
    return found[0]


def central_difference(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float
) -> torch.Tensor:
    cols = []
    for i in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=F64)
        e[i] = h
        e = e.reshape(x.shape)
        cols.append((fn(x + e) - fn(x - e)) / (2 * h))
    return torch.stack(cols, dim=-1)


def box_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    Q = spd(4, seed)
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed + 100)
    c = 1.5 * torch.randn(4, dtype=F64, generator=g)
    lo = -0.2 - torch.rand(4, dtype=F64, generator=g)
    hi = 0.2 + torch.rand(4, dtype=F64, generator=g)
    return Q, c, lo, hi


def box_projection(x: torch.Tensor, Q: Any, c: Any, lo: torch.Tensor, hi: torch.Tensor) -> Any:
    return projections.box(x, lo, hi)


def box_method(Q: torch.Tensor) -> fi.ProjectedGradient:
    eta = 1.0 / float(torch.linalg.eigvalsh(Q)[-1])
    return fi.ProjectedGradient(projection=box_projection, step_size=eta, maxiter=5000)


@pytest.mark.parametrize("seed", [0, 1, 8])
def test_box_qp_solution_and_derivatives_against_active_set_enumeration(seed: int) -> None:
    Q, c, lo, hi = box_problem(seed)
    ref, margin = box_qp_reference(Q, c, lo, hi)
    assert margin > MARGIN, "a non-degenerate instance (finite differences are valid)"
    method = box_method(Q)
    x0 = torch.zeros(4, dtype=F64)
    sol = fi.minimize(quadratic, x0, Q, c, lo, hi, method=method)
    assert bool(sol.converged)
    torch.testing.assert_close(sol.value, ref, rtol=1e-8, atol=1e-9)
    active = (ref - lo).abs() < 1e-9
    active |= (ref - hi).abs() < 1e-9
    assert active.any(), "an active bound is exercised"
    assert not active.all(), "a free coordinate is exercised"

    def solution(c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return fi.minimize(quadratic, x0, Q, c, lo, hi, method=method).value

    jac = jacrev(solution, argnums=(0, 1, 2))(c, lo, hi)
    fds = [
        central_difference(lambda v: box_qp_reference(Q, v, lo, hi)[0], c, 1e-6),
        central_difference(lambda v: box_qp_reference(Q, c, v, hi)[0], lo, 1e-6),
        central_difference(lambda v: box_qp_reference(Q, c, lo, v)[0], hi, 1e-6),
    ]
    for got, want in zip(jac, fds, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    # at an active bound the coordinate follows the bound one for one
    index = int(torch.nonzero(active)[0])
    bound_jac = jac[1] + jac[2]
    assert abs(float(bound_jac[index, index]) - 1.0) < 1e-8

    # forward mode, all three at once
    tangents = tuple(
        torch.randn(
            4,
            dtype=F64,
            generator=torch.Generator(device=torch.get_default_device()).manual_seed(k),
        )
        for k in range(3)
    )
    tangent = jvp(solution, (c, lo, hi), tangents)[1]
    want = fds[0] @ tangents[0] + fds[1] @ tangents[1] + fds[2] @ tangents[2]
    torch.testing.assert_close(tangent, want, rtol=1e-6, atol=1e-8)


def test_simplex_qp_solution_and_derivatives_against_support_enumeration() -> None:
    Q = spd(5, 7)
    c = torch.tensor([0.3, -1.0, 0.8, -0.6, 0.1], dtype=F64)
    total = torch.tensor(1.5, dtype=F64)
    ref, margin = simplex_qp_reference(Q, c, total)
    assert margin > MARGIN
    assert 1 < int((ref > 0).sum()) < 5, "some coordinates at zero, some not"

    def P(x: torch.Tensor, Q: Any, c: Any, total: torch.Tensor) -> torch.Tensor:
        return projections.simplex(x, total)

    eta = 1.0 / float(torch.linalg.eigvalsh(Q)[-1])
    method = fi.ProjectedGradient(projection=P, step_size=eta, maxiter=5000)
    x0 = torch.full((5,), 0.3, dtype=F64)

    def solution(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return fi.minimize(quadratic, x0, Q, c, total, method=method).value

    torch.testing.assert_close(solution(c, total), ref, rtol=1e-8, atol=1e-9)
    jac_c, jac_total = jacrev(solution, argnums=(0, 1))(c, total)
    fd_c = central_difference(lambda v: simplex_qp_reference(Q, v, total)[0], c, 1e-6)
    fd_total = central_difference(lambda v: simplex_qp_reference(Q, c, v)[0], total, 1e-6)
    torch.testing.assert_close(jac_c, fd_c, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(jac_total, fd_total.reshape(5), rtol=1e-6, atol=1e-8)


def test_l2_ball_closed_form_and_radius_derivative() -> None:
    """min 0.5 ||x - a||^2 s.t. ||x|| <= r with ||a|| > r: x* = r a / ||a||."""

    def L(x: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x - a) ** 2).sum()

    def P(x: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return projections.l2_ball(x, r)

    method = fi.ProjectedGradient(projection=P, step_size=0.7)
    a = torch.tensor([1.0, -2.0, 2.0], dtype=F64)
    r = torch.tensor(1.5, dtype=F64)

    def solution(a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return fi.minimize(L, torch.zeros(3, dtype=F64), a, r, method=method).value

    torch.testing.assert_close(solution(a, r), r * a / a.norm())
    jac_a, jac_r = jacrev(solution, argnums=(0, 1))(a, r)
    n = a.norm()
    torch.testing.assert_close(jac_r, a / n)
    torch.testing.assert_close(jac_a, r / n * (torch.eye(3, dtype=F64) - torch.outer(a, a) / n**2))
    # inside the ball the constraint is inactive: x* = a, dx*/dr = 0
    inside = torch.tensor([0.1, 0.2, -0.3], dtype=F64)
    torch.testing.assert_close(jacrev(solution, argnums=1)(inside, r), torch.zeros(3, dtype=F64))


def test_nonnegative_least_squares_matches_enumeration() -> None:
    """Nonnegative least squares through fi.least_squares with ProjectedGradient: the box
    [0, inf) enumeration with the normal-equation quadratic."""
    g = torch.Generator(device=torch.get_default_device()).manual_seed(3)
    A = torch.randn(8, 4, dtype=F64, generator=g)
    b = torch.randn(8, dtype=F64, generator=g)
    Q, c = A.T @ A, -A.T @ b
    inf = torch.full((4,), 1e6, dtype=F64)
    ref, margin = box_qp_reference(Q, c, torch.zeros(4, dtype=F64), inf)
    assert margin > MARGIN
    assert (ref == 0).any()

    def P(x: torch.Tensor, A: Any, b: Any) -> torch.Tensor:
        return projections.nonnegative(x)

    eta = 1.0 / float(torch.linalg.eigvalsh(Q)[-1])
    sol = fi.least_squares(
        lambda x, A, b: A @ x - b,
        torch.zeros(4, dtype=F64),
        A,
        b,
        method=fi.ProjectedGradient(projection=P, step_size=eta, maxiter=5000),
    )
    torch.testing.assert_close(sol.value, ref, rtol=1e-8, atol=1e-9)


def test_vmap_grad_over_bounds_equals_python_loop() -> None:
    Q, c, lo, hi = box_problem(0)
    method = box_method(Q)
    scales = torch.tensor([0.5, 1.0, 2.0], dtype=F64)

    def outer(s: torch.Tensor) -> torch.Tensor:
        x = fi.minimize(quadratic, torch.zeros(4, dtype=F64), Q, c, s * lo, s * hi, method=method)
        return (x.value**2).sum()

    def stats(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sol = fi.minimize(quadratic, torch.zeros(4, dtype=F64), Q, c, s * lo, s * hi, method=method)
        return sol.value, sol.iterations, sol.residual_norm

    batched = vmap(grad(outer))(scales)
    values, iterations, residuals = vmap(stats)(scales)
    for i, s in enumerate(scales):
        torch.testing.assert_close(batched[i], grad(outer)(s), rtol=1e-10, atol=1e-12)
        value, count, residual = stats(s)
        # the same iterations, equal up to rounding (the objective's x @ Q @ x is a batched
        # matmul under vmap, which rounds differently by an ulp)
        assert int(iterations[i]) == int(count)
        torch.testing.assert_close(values[i], value, rtol=1e-14, atol=1e-16)
        # the residual (~1e-11) is a difference of O(1) numbers: rounding is absolute, ~1e-16
        torch.testing.assert_close(residuals[i], residual, rtol=0, atol=1e-15)
        fd = (box_qp_reference(Q, c, (s + 1e-6) * lo, (s + 1e-6) * hi)[0] ** 2).sum()
        fd = fd - (box_qp_reference(Q, c, (s - 1e-6) * lo, (s - 1e-6) * hi)[0] ** 2).sum()
        torch.testing.assert_close(batched[i], fd / 2e-6, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_projections_satisfy_their_variational_inequality(seed: int) -> None:
    """z = P(x) iff z in C and (x - z) . (y - z) <= 0 for all y in C: checked against random
    points of each set (an independent characterization, not the algorithm)."""
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    x = 3 * torch.randn(6, dtype=F64, generator=g)
    lo, hi = -torch.rand(6, dtype=F64, generator=g), torch.rand(6, dtype=F64, generator=g)
    radius = torch.tensor(1.3, dtype=F64)
    total = torch.tensor(2.0, dtype=F64)
    cases: list[tuple[torch.Tensor, Callable[[], torch.Tensor]]] = [
        (projections.nonnegative(x), lambda: torch.rand(6, dtype=F64, generator=g) * 5),
        (
            projections.box(x, lo, hi),
            lambda: lo + (hi - lo) * torch.rand(6, dtype=F64, generator=g),
        ),
        (
            projections.simplex(x, total),
            lambda: total * torch.distributions.Dirichlet(torch.ones(6, dtype=F64)).sample(),
        ),
        (projections.l2_ball(x, radius), lambda: _ball_point(g, radius)),
    ]
    for z, sample in cases:
        for _ in range(50):
            y = sample()
            assert float((x - z) @ (y - z)) <= 1e-12
    z = projections.simplex(x, total)
    assert float(z.min()) >= 0
    assert abs(float(z.sum() - total)) < 1e-12
    assert float(projections.l2_ball(x, radius).norm()) <= float(radius) + 1e-12


def _ball_point(g: torch.Generator, radius: torch.Tensor) -> torch.Tensor:
    d = torch.randn(6, dtype=F64, generator=g)
    point: torch.Tensor = d / d.norm() * radius * torch.rand((), dtype=F64, generator=g)
    return point


def test_projections_on_pytrees() -> None:
    x = {"a": torch.tensor([-1.0, 2.0]), "b": torch.tensor(3.0)}
    torch.testing.assert_close(projections.nonnegative(x)["a"], torch.tensor([0.0, 2.0]))
    boxed = projections.box(x, {"a": torch.zeros(2), "b": torch.tensor(0.0)}, 1.0)
    torch.testing.assert_close(boxed["b"], torch.tensor(1.0))
    ball = projections.l2_ball(x, 1.0)
    norm = torch.sqrt((ball["a"] ** 2).sum() + ball["b"] ** 2)
    torch.testing.assert_close(norm, torch.tensor(1.0))
    s = projections.simplex(x)
    torch.testing.assert_close(s["a"].sum() + s["b"], torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"projections.box\(x, lower, upper\): expected lower"):
        projections.box(x, {"a": torch.zeros(2)}, 1.0)


def test_bad_input_errors() -> None:
    Q, c, lo, hi = box_problem(0)
    with pytest.raises(ValueError, match=r"ProjectedGradient: step_size must be a number > 0"):
        fi.ProjectedGradient(projection=box_projection, step_size=0.0)
    with pytest.raises(TypeError, match=r"ProjectedGradient: projection must be a callable"):
        fi.ProjectedGradient(projection=1.0, step_size=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"solve_fixed_point.*ProjectedGradient.*fi.minimize"):
        fi.solve_fixed_point(lambda x: x / 2, torch.ones(2, dtype=F64), method=box_method(Q))
    wrong = fi.ProjectedGradient(projection=lambda x, *a: x[:2], step_size=0.1)
    with pytest.raises(
        ValueError,
        match=r"with ProjectedGradient: projection\(x, \*args\) leaf 0 "
        r"has shape \(2,\); expected \(4,\)",
    ):
        fi.minimize(quadratic, torch.zeros(4, dtype=F64), Q, c, method=wrong)
    # (a projection that captures a tensor requiring grad is differentiated through it:
    # see test_captured_bound_gets_the_gradient_of_an_explicit_one)
    with pytest.raises(fi.ConvergenceError, match=r"with ProjectedGradient: did not converge"):
        fi.minimize(
            quadratic,
            torch.zeros(4, dtype=F64),
            Q,
            c,
            lo,
            hi,
            method=fi.ProjectedGradient(
                projection=box_projection, step_size=1e-3, maxiter=3, on_failure="raise"
            ),
        )


def test_captured_bound_gets_the_gradient_of_an_explicit_one() -> None:
    """A projection closing over a bound that requires grad (as PyTorch code is written): the
    rule differentiates what the projection touches, so the bound gets the gradient it gets
    as an explicit argument, under .backward() and under torch.func.grad."""
    Q, c, lo, hi = box_problem(1)
    method = box_method(Q)
    x0 = torch.zeros(4, dtype=F64)
    explicit = grad(lambda h: fi.minimize(quadratic, x0, Q, c, lo, h, method=method).value.sum())(
        hi
    )
    assert float(explicit.abs().max()) > 0.1  # some bound is active

    captured = hi.clone().requires_grad_()
    closure = fi.ProjectedGradient(
        projection=lambda x, Q, c: projections.box(x, lo, captured),
        step_size=method.step_size,
        maxiter=5000,
    )
    torch.autograd.backward(fi.minimize(quadratic, x0, Q, c, method=closure).value.sum())
    torch.testing.assert_close(captured.grad, explicit, rtol=1e-9, atol=1e-12)

    def through_closure(h: torch.Tensor) -> torch.Tensor:
        m = fi.ProjectedGradient(
            projection=lambda x, Q, c: projections.box(x, lo, h),
            step_size=method.step_size,
            maxiter=5000,
        )
        return fi.minimize(quadratic, x0, Q, c, method=m).value.sum()

    torch.testing.assert_close(grad(through_closure)(hi), explicit, rtol=1e-9, atol=1e-12)

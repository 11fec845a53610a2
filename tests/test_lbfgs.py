"""``fi.LBFGS`` under ``fi.minimize``, against references computed without the library.

References: a dense float64 Newton iteration written here (explicit Hessian,
``torch.linalg.solve``) for the solution, central finite differences of that reference
solution for derivatives, the known minimizer of the Rosenbrock function, and a Python loop
for ``vmap``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import grad, jvp, vmap

import funcimplicit as fi

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def logistic_data(seed: int, n: int = 30, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    X = torch.randn(n, d, dtype=F64, generator=g)
    w_true = torch.randn(d, dtype=F64, generator=g)
    y = (torch.rand(n, dtype=F64, generator=g) < torch.sigmoid(X @ w_true)).to(F64)
    return X, y


def logistic_loss(
    w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    # Not X @ w: batched by vmap, a matrix product becomes another BLAS kernel that rounds
    # differently, and the vmap test below asks for bitwise-equal iterations.
    logits = (X * w).sum(-1)
    data = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    return data + 0.5 * lam * (w**2).sum()


def newton_reference(lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense Newton on the logistic loss with the Hessian written out: X^T S X + lam I."""
    w = torch.zeros(X.shape[1], dtype=F64)
    for _ in range(50):
        p = torch.sigmoid(X @ w)
        g = X.T @ (p - y) + lam * w
        H = X.T @ ((p * (1 - p))[:, None] * X) + lam * torch.eye(X.shape[1], dtype=F64)
        step = torch.linalg.solve(H, g)
        w = w - step
        if float(step.abs().max()) < 1e-15:
            break
    return w


def central_difference(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float
) -> torch.Tensor:
    """d f / d x by central differences, one column per entry of ``x`` (flattened)."""
    cols = []
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        cols.append((f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * h))
    return torch.stack(cols, dim=-1)


def test_logistic_solution_matches_dense_newton() -> None:
    X, y = logistic_data(0)
    lam = torch.tensor(0.3, dtype=F64)
    sol = fi.minimize(logistic_loss, torch.zeros(4, dtype=F64), lam, X, y, method=fi.LBFGS())
    ref = newton_reference(lam, X, y)
    assert bool(sol.converged)
    assert int(sol.status) == fi.Status.CONVERGED
    torch.testing.assert_close(sol.value, ref, rtol=1e-9, atol=1e-10)
    # the reported gradient norm is the gradient recomputed here
    p = torch.sigmoid(X @ sol.value)
    g = X.T @ (p - y) + lam * sol.value
    torch.testing.assert_close(
        sol.residual_norm, torch.linalg.vector_norm(g), rtol=1e-3, atol=1e-13
    )
    assert 0 < int(sol.iterations) < 100  # superlinear: far fewer than gradient descent


def test_hypergradient_and_jvp_match_finite_differences_of_reference() -> None:
    X, y = logistic_data(1)
    Xv, yv = logistic_data(2)
    lam = torch.tensor(0.5, dtype=F64)

    def outer(lam: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        w = fi.minimize(logistic_loss, torch.zeros(4, dtype=F64), lam, X, y, method=fi.LBFGS())
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w.value, yv)

    def outer_ref(lam: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        w = newton_reference(lam, X, y)
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w, yv)

    g_lam, g_X = grad(outer, argnums=(0, 1))(lam, X)
    fd_lam = central_difference(lambda v: outer_ref(v, X), lam, 1e-5)
    fd_X = central_difference(lambda v: outer_ref(lam, v), X, 1e-5).reshape(X.shape)
    torch.testing.assert_close(g_lam, fd_lam.reshape(()), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_X, fd_X, rtol=1e-6, atol=1e-9)

    # forward mode: the tangent of the solution along lam
    def solution(lam: torch.Tensor) -> torch.Tensor:
        return fi.minimize(
            logistic_loss, torch.zeros(4, dtype=F64), lam, X, y, method=fi.LBFGS()
        ).value

    tangent = jvp(solution, (lam,), (torch.ones((), dtype=F64),))[1]
    fd_w = central_difference(lambda v: newton_reference(v, X, y), lam, 1e-5)
    torch.testing.assert_close(tangent, fd_w.reshape(-1), rtol=1e-6, atol=1e-9)


def test_vmap_grad_equals_python_loop_with_per_element_iterations() -> None:
    X, y = logistic_data(3)
    # (lam = 0.01 converges too, but near its solution the Armijo test compares values of L
    # that differ by less than their rounding; there the batched sum inside the loss, which
    # rounds differently, can flip one decision and change the path, though not the answer.)
    lams = torch.tensor([0.1, 0.3, 5.0], dtype=F64)

    def stats(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sol = fi.minimize(logistic_loss, torch.zeros(4, dtype=F64), lam, X, y, method=fi.LBFGS())
        return sol.value, sol.iterations

    def outer(lam: torch.Tensor) -> torch.Tensor:
        return stats(lam)[0].sum()

    batched_grad = vmap(grad(outer))(lams)
    batched_value, batched_iters = vmap(stats)(lams)
    for i, lam in enumerate(lams):
        value, iters = stats(lam)
        # the same iterations per element: equal up to rounding, and the same count
        torch.testing.assert_close(batched_value[i], value, rtol=1e-12, atol=1e-13)
        assert int(batched_iters[i]) == int(iters)
        torch.testing.assert_close(batched_grad[i], grad(outer)(lam), rtol=1e-10, atol=1e-12)
    # weakly and strongly regularized problems take different numbers of iterations
    assert len(set(batched_iters.tolist())) > 1


def rosenbrock(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (a - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def test_rosenbrock_converges_and_never_increases_the_objective() -> None:
    """The Armijo line search guarantees descent: L after k iterations never exceeds L
    after k - 1 (each truncated run repeats the same first iterations)."""
    a = torch.tensor(1.0, dtype=F64)
    init = torch.tensor([-1.2, 1.0], dtype=F64)
    values = [float(rosenbrock(init, a))]
    for k in range(1, 30):
        sol = fi.minimize(
            rosenbrock, init, a, method=fi.LBFGS(maxiter=k, on_failure="ignore"), implicit=False
        )
        values.append(float(rosenbrock(sol.value, a)))
    assert all(b <= v for v, b in itertools.pairwise(values))
    assert values[-1] < values[0]
    sol = fi.minimize(rosenbrock, init, a, method=fi.LBFGS())
    assert bool(sol.converged)
    torch.testing.assert_close(sol.value, torch.ones(2, dtype=F64), rtol=1e-8, atol=1e-8)


def test_unrolled_derivative_matches_implicit_at_convergence() -> None:
    """``implicit=False`` differentiates L-BFGS's own iterations (line search included)."""
    X, y = logistic_data(4, d=3)
    lam = torch.tensor(1.0, dtype=F64)

    def solution(lam: torch.Tensor, implicit: bool) -> torch.Tensor:
        return fi.minimize(
            logistic_loss,
            torch.zeros(3, dtype=F64),
            lam,
            X,
            y,
            method=fi.LBFGS(rtol=1e-13, atol=1e-13, on_failure="ignore"),
            implicit=implicit,
        ).value.sum()

    implicit = grad(lambda v: solution(v, True))(lam)
    unrolled = grad(lambda v: solution(v, False))(lam)
    # The unrolled derivative converges to the implicit one with the iterates (to a few
    # digits: L-BFGS's memory is itself an approximation of the Hessian, its derivative is
    # not exact until the memory has caught up).
    torch.testing.assert_close(unrolled, implicit, rtol=1e-4, atol=1e-8)


def test_pytree_init_and_float32() -> None:
    def L(p: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        return ((p["a"] - c) ** 2).sum() + (p["b"] - 2 * c[0]) ** 4 + (p["b"] - 2 * c[0]) ** 2

    c = torch.tensor([1.0, -2.0], dtype=torch.float32)
    init = {"a": torch.zeros(2), "b": torch.zeros(())}
    sol = fi.minimize(L, init, c, method=fi.LBFGS())
    assert bool(sol.converged)
    torch.testing.assert_close(sol.value["a"], c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sol.value["b"], 2 * c[0], rtol=1e-4, atol=1e-4)


def test_bad_input_errors() -> None:
    X, y = logistic_data(0)
    lam = torch.tensor(0.3, dtype=F64)
    with pytest.raises(ValueError, match=r"LBFGS: memory must be a positive int; received 0"):
        fi.LBFGS(memory=0)
    with pytest.raises(ValueError, match=r"LBFGS: max_backtracks"):
        fi.LBFGS(max_backtracks=-1)
    with pytest.raises(
        TypeError,
        match=r"solve_root\(root_fn, init, \*args\): method LBFGS .*"
        r"fi\.minimize, fi\.least_squares",
    ):
        fi.solve_root(lambda x: x**3 - 1, torch.ones(1, dtype=F64), method=fi.LBFGS())
    with pytest.raises(
        ValueError, match=r"minimize\(objective, init, \*args\): expected objective"
    ):
        fi.minimize(lambda w, *a: w**2, torch.ones(2, dtype=F64), method=fi.LBFGS())
    with pytest.raises(fi.ConvergenceError, match=r"with LBFGS: did not converge"):
        fi.minimize(
            logistic_loss,
            torch.zeros(4, dtype=F64),
            lam,
            X,
            y,
            method=fi.LBFGS(maxiter=2, on_failure="raise"),
        )
    with pytest.warns(fi.ConvergenceWarning, match=r"after 2 iterations"):
        sol = fi.minimize(
            logistic_loss, torch.zeros(4, dtype=F64), lam, X, y, method=fi.LBFGS(maxiter=2)
        )
    assert int(sol.status) == fi.Status.MAX_ITERATIONS


def test_unbounded_objective_reports_failure_per_element() -> None:
    """An element whose objective is unbounded below never converges and says so; its batch
    neighbour converges as it would alone."""

    def L(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).sum() * s - x.sum()  # unbounded below for s < 0

    s = torch.tensor([1.0, -1.0], dtype=F64)
    sols: Any = vmap(
        lambda s: fi.minimize(
            L, torch.zeros(2, dtype=F64), s, method=fi.LBFGS(maxiter=50, on_failure="ignore")
        )
    )(s)
    assert sols.converged.tolist() == [True, False]
    torch.testing.assert_close(sols.value[0], torch.ones(2, dtype=F64))


def test_second_derivative_matches_second_differences_of_reference() -> None:
    """``hessian`` (forward-over-reverse) of a validation loss through the L-BFGS solution,
    against the second central difference of the dense Newton reference."""
    X, y = logistic_data(5, d=3)
    Xv, yv = logistic_data(6, d=3)

    def val(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(Xv @ w, yv)

    def outer(lam: torch.Tensor) -> torch.Tensor:
        sol = fi.minimize(logistic_loss, torch.zeros(3, dtype=F64), lam, X, y, method=fi.LBFGS())
        return val(sol.value)

    lam, h = torch.tensor(0.7, dtype=F64), 1e-3
    second = (
        val(newton_reference(lam + h, X, y))
        - 2 * val(newton_reference(lam, X, y))
        + val(newton_reference(lam - h, X, y))
    ) / h**2
    # truncation O(h^2 f'''') ~ 1e-7 relative here; rounding 1e-16 / h^2 = 1e-10
    torch.testing.assert_close(torch.func.hessian(outer)(lam), second, rtol=1e-5, atol=1e-9)

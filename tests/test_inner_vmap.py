"""Inner solvers under ``torch.func.vmap``: per-element stopping, batch cost, meta-gradients.

The reference for every batched result is the same solve run on each element alone, in a Python
loop: each element must take exactly the same number of iterations, reach the same status, and
agree in value to rounding (~1e-12). A batch must cost about its slowest element's number of
evaluations of ``F`` (counted by a Python counter inside ``F``), not ``maxiter``.
"""

from __future__ import annotations

from typing import Any

import inner_methods
import pytest
import torch
from torch.func import grad, jacrev, vmap

import funcimplicit as fi
from funcimplicit._core import loop as _loop

F64 = torch.float64


# Tiny problems: one intra-op thread (the shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


METHODS = inner_methods.methods("fixed_point")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


class Counter:
    """``x <- cos(x) + theta`` that counts its calls (one per batched evaluation under vmap)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cos(x) + theta


def cos_map(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + theta


def assert_batch_equals_loop(batched: fi.Solution[Any], singles: list[fi.Solution[Any]]) -> None:
    for i, single in enumerate(singles):
        assert int(batched.iterations[i]) == int(single.iterations), (i, batched.iterations)
        assert int(batched.status[i]) == int(single.status), i
        assert bool(batched.converged[i]) == bool(single.converged), i
        torch.testing.assert_close(batched.value[i], single.value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            batched.residual_norm[i], single.residual_norm, rtol=1e-6, atol=1e-14
        )
        torch.testing.assert_close(batched.tolerance[i], single.tolerance, rtol=1e-12, atol=0.0)


# thetas whose plain iterations need very different counts (rate |sin x*|: 0.1 .. 0.93)
THETAS = torch.tensor([-0.9, -0.5, 0.0, 0.3, 0.6, 0.8], dtype=F64)


@pytest.mark.parametrize("name", list(METHODS))
def test_vmap_cos_each_element_equals_its_unbatched_solve(name: str) -> None:
    method = METHODS[name]
    x0 = torch.zeros((), dtype=F64)

    def solve(theta: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(cos_map, x0, theta, method=method)

    batched = vmap(solve)(THETAS)
    singles = [solve(t) for t in THETAS]
    assert batched.value.shape == (len(THETAS),)
    assert batched.iterations.shape == (len(THETAS),)
    assert batched.iterations.dtype == torch.int64
    assert bool(batched.converged.all())
    assert_batch_equals_loop(batched, singles)
    if name == "FixedPointIteration":
        # the elements really stop at different iterations
        assert len(set(batched.iterations.tolist())) >= 4


@pytest.mark.parametrize("alone", [False, True], ids=["batched-tail", "alone-tail"])
@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_vmap_evaluation_count_is_the_slowest_elements(
    name: str, alone: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch stops when its slowest element does. With the last few elements run one
    after another outside the ``vmap`` (``loop.COMPACT_ALONE``, the default), each of them
    evaluates ``F`` for itself: at most the sum of their own counts."""
    monkeypatch.setattr(_loop, "COMPACT_ALONE", alone)
    method = METHODS[name]
    x0 = torch.zeros((), dtype=F64)
    counts = []
    for theta in THETAS:
        f = Counter()
        fi.solve_fixed_point(f, x0, theta, method=method)
        counts.append(f.calls)
    f = Counter()
    batched = vmap(lambda t: fi.solve_fixed_point(f, x0, t, method=method))(THETAS)
    slowest = max(counts)
    # about the slowest element's evaluations (a couple of extra layout/bookkeeping calls at
    # most), and far below maxiter * evaluations per iteration
    most = sum(sorted(counts)[-_loop.ALONE_AT_MOST :]) if alone else slowest
    assert slowest - 2 <= f.calls <= most + 2, (f.calls, counts)
    assert f.calls < (_loop.ALONE_AT_MOST if alone else 1) * method.maxiter
    assert int(batched.iterations.max()) < method.maxiter


def test_vmap_affine_batch_of_radii() -> None:
    """A batch mixing fast and slow contractions: the fast ones stop early, frozen exactly."""
    n = 10
    g = torch.randn(n, n, dtype=F64, generator=_gen(0))
    g = g / torch.linalg.eigvals(g).abs().max()
    radii = torch.tensor([0.1, 0.5, 0.9, 0.95], dtype=F64)
    Js = radii[:, None, None] * g
    cs = torch.randn(4, n, dtype=F64, generator=_gen(1))
    x0 = torch.zeros(n, dtype=F64)

    def affine(x: torch.Tensor, J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return J @ x + c

    for method in (fi.FixedPointIteration(maxiter=2000), fi.Anderson(), fi.Broyden(memory=30)):
        batched = vmap(lambda J, c, m=method: fi.solve_fixed_point(affine, x0, J, c, method=m))(
            Js, cs
        )
        singles = [
            fi.solve_fixed_point(affine, x0, J, c, method=method)
            for J, c in zip(Js, cs, strict=True)
        ]
        assert_batch_equals_loop(batched, singles)
        refs = torch.stack(
            [
                torch.linalg.solve(torch.eye(n, dtype=F64) - J, c)
                for J, c in zip(Js, cs, strict=True)
            ]
        )
        torch.testing.assert_close(batched.value, refs, rtol=1e-8, atol=1e-9)
    its = batched.iterations
    assert bool((its[:-1] <= its[1:]).all())  # slower contraction, more iterations


def test_vmap_newton_cube_roots() -> None:
    a = torch.tensor([0.001, 1.0, 8.0, 1000.0, 27.0], dtype=F64)

    def cube(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x**3 - a

    for method in (fi.Newton(), fi.Newton(solve=fi.LU()), fi.Newton(backtracking=False)):
        batched = vmap(
            lambda a, m=method: fi.solve_root(cube, torch.ones((), dtype=F64), a, method=m)
        )(a)
        singles = [fi.solve_root(cube, torch.ones((), dtype=F64), ai, method=method) for ai in a]
        assert_batch_equals_loop(batched, singles)
        # |x^3 - a| <= max(1e-10, 1e-10 |x|) bounds the error by that over 3 x^2
        x = a ** (1.0 / 3.0)
        assert bool(
            ((batched.value - x).abs() <= 1e-10 * torch.clamp(x, min=1.0) / (3 * x**2) * 1.01).all()
        )
        assert len(set(batched.iterations.tolist())) >= 3


def test_vmap_minimize_ridge_tasks() -> None:
    d = 4
    X = torch.randn(5, 12, d, dtype=F64, generator=_gen(0))
    y = torch.randn(5, 12, dtype=F64, generator=_gen(1))
    lam = torch.tensor(0.7, dtype=F64)

    def loss(w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * lam * (w**2).sum()

    w0 = torch.zeros(d, dtype=F64)
    for method in (None, fi.GradientDescent(step_size=0.01, maxiter=5000)):
        kw: dict[str, Any] = {} if method is None else {"method": method}
        batched = vmap(lambda X, y, kw=kw: fi.minimize(loss, w0, lam, X, y, **kw))(X, y)
        singles = [fi.minimize(loss, w0, lam, Xi, yi, **kw) for Xi, yi in zip(X, y, strict=True)]
        assert_batch_equals_loop(batched, singles)
        refs = torch.stack(
            [
                torch.linalg.solve(Xi.mT @ Xi + lam * torch.eye(d, dtype=F64), Xi.mT @ yi)
                for Xi, yi in zip(X, y, strict=True)
            ]
        )
        torch.testing.assert_close(batched.value, refs, rtol=1e-8, atol=1e-10)


def test_vmap_over_init_only() -> None:
    """Batch of starting points, shared args: all reach the same fixed point, each at its pace."""
    theta = torch.tensor(0.4, dtype=F64)
    inits = torch.tensor([-3.0, 0.0, 0.9, 5.0], dtype=F64)
    for method in (fi.Anderson(), fi.FixedPointIteration(maxiter=500)):
        batched = vmap(lambda x0, m=method: fi.solve_fixed_point(cos_map, x0, theta, method=m))(
            inits
        )
        singles = [fi.solve_fixed_point(cos_map, x0, theta, method=method) for x0 in inits]
        assert_batch_equals_loop(batched, singles)


def test_vmap_dict_pytree() -> None:
    def F(x: dict[str, torch.Tensor], p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"u": 0.5 * torch.tanh(x["v"].sum() + p["a"]), "v": 0.5 * torch.sin(x["u"] * p["b"])}

    init = {"u": torch.zeros((), dtype=F64), "v": torch.zeros(3, dtype=F64)}
    params = {
        "a": torch.randn(4, dtype=F64, generator=_gen(0)),
        "b": torch.randn(4, 3, dtype=F64, generator=_gen(1)),
    }
    batched = vmap(lambda p: fi.solve_fixed_point(F, init, p))(params)
    assert batched.value["u"].shape == (4,)
    assert batched.value["v"].shape == (4, 3)
    for i in range(4):
        single = fi.solve_fixed_point(F, init, {"a": params["a"][i], "b": params["b"][i]})
        assert int(batched.iterations[i]) == int(single.iterations)
        for k in ("u", "v"):
            torch.testing.assert_close(batched.value[k][i], single.value[k], rtol=1e-12, atol=1e-12)


def test_nested_vmap_equals_double_loop() -> None:
    thetas = torch.tensor([[-0.5, 0.2, 0.7], [0.1, 0.0, -0.3]], dtype=F64)
    x0 = torch.zeros((), dtype=F64)

    def solve(t: torch.Tensor) -> fi.Solution[torch.Tensor]:
        return fi.solve_fixed_point(cos_map, x0, t, method=fi.Anderson())

    batched = vmap(vmap(solve))(thetas)
    assert batched.value.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = solve(thetas[i, j])
            assert int(batched.iterations[i, j]) == int(single.iterations)
            torch.testing.assert_close(batched.value[i, j], single.value, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Derivatives under vmap


def test_vmap_grad_meta_loss_over_tasks_equals_loop() -> None:
    """Per-task meta-gradients: ``vmap(grad(meta_loss))`` against a Python loop of ``grad`` and
    against the closed-form ridge hypergradient (classic autograd through Cholesky)."""
    tasks, n, d = 4, 15, 3
    X = torch.randn(tasks, n, d, dtype=F64, generator=_gen(0))
    y = torch.randn(tasks, n, dtype=F64, generator=_gen(1))
    Xv = torch.randn(tasks, n, d, dtype=F64, generator=_gen(2))
    yv = torch.randn(tasks, n, dtype=F64, generator=_gen(3))
    log_lam = torch.tensor([0.0, -1.0, 0.5], dtype=F64)

    def loss(
        w: torch.Tensor, log_lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * (torch.exp(log_lam) * w**2).sum()

    def meta_loss(
        log_lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor
    ) -> torch.Tensor:
        w = fi.minimize(loss, torch.zeros(d, dtype=F64), log_lam, X, y).value
        return 0.5 * ((Xv @ w - yv) ** 2).sum()

    batched = vmap(grad(meta_loss), in_dims=(None, 0, 0, 0, 0))(log_lam, X, y, Xv, yv)
    loop = torch.stack([grad(meta_loss)(log_lam, X[i], y[i], Xv[i], yv[i]) for i in range(tasks)])
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)

    def closed_form_meta_loss(
        log_lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor, Xv: torch.Tensor, yv: torch.Tensor
    ) -> torch.Tensor:
        L = torch.linalg.cholesky(X.mT @ X + torch.diag(torch.exp(log_lam)))
        w = torch.cholesky_solve((X.mT @ y)[:, None], L)[:, 0]
        return 0.5 * ((Xv @ w - yv) ** 2).sum()

    for i in range(tasks):
        ref = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
            lambda ll, i=i: closed_form_meta_loss(ll, X[i], y[i], Xv[i], yv[i]), log_lam
        )
        torch.testing.assert_close(batched[i], ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_vmap_grad_fixed_point_tasks(name: str) -> None:
    """DEQ-like tasks ``z = tanh(W z + b_task)``: vmap(grad) equals the loop."""
    method = METHODS[name]
    n, tasks = 4, 5
    g = torch.randn(n, n, dtype=F64, generator=_gen(5))
    W = 0.8 * g / torch.linalg.matrix_norm(g, 2)
    bs = 2.0 * torch.randn(tasks, n, dtype=F64, generator=_gen(6))
    v = torch.randn(n, dtype=F64, generator=_gen(7))

    def F(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(W @ z + b)

    def meta_loss(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = fi.solve_fixed_point(F, torch.zeros(n, dtype=F64), W, b, method=method).value
        return (v * z).sum() + (z**2).sum()

    batched = vmap(grad(meta_loss, argnums=(0, 1)), in_dims=(None, 0))(W, bs)
    for i in range(tasks):
        g_W, g_b = grad(meta_loss, argnums=(0, 1))(W, bs[i])
        torch.testing.assert_close(batched[0][i], g_W, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(batched[1][i], g_b, rtol=1e-9, atol=1e-11)


def test_vmap_jacrev_of_solution() -> None:
    thetas = torch.tensor([[0.1, 0.5], [-0.3, 0.2], [0.7, -0.6]], dtype=F64)
    M = torch.tensor([[0.3, 0.1], [-0.2, 0.4]], dtype=F64)

    def F(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(M @ x) * 0.5 + t

    def solution(t: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(F, torch.zeros(2, dtype=F64), t).value

    batched = vmap(jacrev(solution))(thetas)
    for i in range(3):
        x = solution(thetas[i])
        # dx/dt = (I - dF/dx)^{-1}, dF/dx = -0.5 diag(sin(M x)) M
        dF = -0.5 * torch.sin(M @ x)[:, None] * M
        ref = torch.linalg.inv(torch.eye(2, dtype=F64) - dF)
        torch.testing.assert_close(batched[i], ref, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------------------------
# Warm starts


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_warm_start_from_previous_solution(name: str) -> None:
    method = METHODS[name]
    theta = torch.tensor(0.5, dtype=F64)
    first = fi.solve_fixed_point(cos_map, torch.zeros((), dtype=F64), theta, method=method)
    assert int(first.iterations) >= 3
    again = fi.solve_fixed_point(cos_map, first.value.detach(), theta, method=method)
    assert int(again.iterations) <= 1
    assert bool(again.converged)
    torch.testing.assert_close(again.value, first.value, rtol=1e-9, atol=0.0)


def test_warm_start_under_vmap_and_after_small_change() -> None:
    x0 = torch.zeros((), dtype=F64)
    method = fi.Anderson()
    first = vmap(lambda t: fi.solve_fixed_point(cos_map, x0, t, method=method))(THETAS)
    again = vmap(lambda x, t: fi.solve_fixed_point(cos_map, x, t, method=method))(
        first.value, THETAS
    )
    assert int(again.iterations.max()) <= 1
    # after a small change of theta a warm start beats a cold one
    moved = THETAS + 1e-3
    warm = vmap(lambda x, t: fi.solve_fixed_point(cos_map, x, t, method=method))(first.value, moved)
    cold = vmap(lambda t: fi.solve_fixed_point(cos_map, x0, t, method=method))(moved)
    assert int(warm.iterations.sum()) < int(cold.iterations.sum())
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-9, atol=1e-10)


def test_vmap_batch_cost_with_counter_for_newton_minimize() -> None:
    """The objective too is evaluated about as often as the slowest task needs."""
    calls = [0]

    def loss(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return (torch.cosh(w - a)).sum() + 0.1 * (w**4).sum()

    a = torch.tensor([[0.0, 0.1], [3.0, -2.0], [0.5, 0.5]], dtype=F64)
    w0 = torch.zeros(2, dtype=F64)
    per_task = []
    for ai in a:
        calls[0] = 0
        fi.minimize(loss, w0, ai)
        per_task.append(calls[0])
    calls[0] = 0
    vmap(lambda ai: fi.minimize(loss, w0, ai))(a)
    assert calls[0] <= max(per_task) + 2, (calls[0], per_task)
    assert calls[0] >= max(per_task) - 2, (calls[0], per_task)

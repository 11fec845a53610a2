"""The backward solve of ``torch.func.grad`` and ``vmap(grad)`` beneath the transforms.

In a first-order backward pass under ``torch.func.grad`` (alone, or inside one ``vmap``), the
implicit rule solves ``A^T u = v`` on the tensors beneath the transforms' wrappers, outside
them (``funcimplicit._rules.linear.solve_beneath``): the same solve at plain cost. Every test
checks the derivative against the closed form of ``x* = (s A)^{-1} b``,

    L = w . x*:   dL/db = (s A)^{-T} w,   dL/ds = -(w . x*) / s,

and whether the solve ran beneath (counted) or, where that would not be sound, at the
transforms' levels as before (second order, a closure over a tensor of the transforms, a
``vmap`` that allows random operations, tensors that classic autograd records).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import grad, hessian, jacrev, vmap

import funcimplicit as fi
from funcimplicit._rules import linear as _linear
from funcimplicit._rules import root as _root

F64 = torch.float64
N = 4


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    m = torch.randn(N, N, dtype=F64, generator=g)
    a = m @ m.T + N * torch.eye(N, dtype=F64)
    return a, torch.randn(N, dtype=F64, generator=g), torch.randn(N, dtype=F64, generator=g)


A, B, W = _data()


def _optimality(x: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return s * (A @ x) - b


def _solver(solve: Any) -> Callable[..., torch.Tensor]:
    @fi.implicit_root(_optimality, argnums=(1, 2), solve=solve)
    def inner(init: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.solve(s * A, b)
        return out

    return inner


SOLVERS = {"Auto": None, "CG": fi.CG(rtol=1e-12), "GMRES": fi.GMRES(rtol=1e-12)}


def _loss(solve: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    inner = _solver(solve)
    return lambda b, s: torch.dot(W, inner(torch.zeros(N, dtype=F64), b, s))


def _closed_form(b: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linalg.solve(s * A, b)
    return torch.linalg.solve(s * A.T, W), -torch.dot(W, x) / s


@pytest.fixture
def beneath(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each backward solve's attempt beneath the transforms: ``True`` where it ran there."""
    seen: list[bool] = []
    original = _linear.solve_beneath

    def recorded(*args: Any) -> Any:
        out = original(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(_root, "solve_beneath", recorded)
    return seen


@pytest.mark.parametrize("name", list(SOLVERS))
def test_grad_solves_beneath_and_is_exact(name: str, beneath: list[bool]) -> None:
    s = torch.tensor(1.5, dtype=F64)
    db, ds = grad(_loss(SOLVERS[name]), argnums=(0, 1))(B, s)
    assert beneath == [True]
    want_b, want_s = _closed_form(B, s)
    torch.testing.assert_close(db, want_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ds, want_s, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_vmap_grad_solves_beneath_per_element(name: str, beneath: list[bool]) -> None:
    bs = torch.randn(
        5, N, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(1)
    )
    ss = torch.linspace(0.5, 3.0, 5, dtype=F64)
    db, ds = vmap(grad(_loss(SOLVERS[name]), argnums=(0, 1)))(bs, ss)
    assert beneath == [True]
    for i in range(5):
        want_b, want_s = _closed_form(bs[i], ss[i])
        torch.testing.assert_close(db[i], want_b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ds[i], want_s, rtol=1e-10, atol=1e-12)


def test_vmap_grad_with_an_unbatched_argument(beneath: list[bool]) -> None:
    """``s`` shared by the batch (``in_dims=None``): passed beneath as one tensor."""
    bs = torch.randn(
        3, N, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(2)
    )
    s = torch.tensor(2.0, dtype=F64)
    db = vmap(grad(_loss(SOLVERS["CG"])), in_dims=(0, None))(bs, s)
    assert beneath == [True]
    for i in range(3):
        torch.testing.assert_close(db[i], _closed_form(bs[i], s)[0], rtol=1e-10, atol=1e-12)


def test_beneath_equals_the_solve_at_the_levels(
    beneath: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same solver, the same iterations: the same numbers as the wrapped solve."""
    bs = torch.randn(
        4, N, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(3)
    )
    ss = torch.linspace(1.0, 2.0, 4, dtype=F64)

    def run() -> torch.Tensor:
        out: torch.Tensor = vmap(grad(_loss(fi.CG(maxiter=3, on_failure="ignore"))))(bs, ss)
        return out

    fast = run()
    monkeypatch.setattr(_root, "solve_beneath", lambda *args: None)
    torch.testing.assert_close(fast, run(), rtol=1e-13, atol=1e-15)
    assert beneath == [True]


def test_second_order_is_not_beneath(beneath: list[bool]) -> None:
    """``hessian`` differentiates the backward solve: it runs at the levels, and the second
    derivative ``d2L/ds2 = 2 (w . x*) / s^2`` is exact."""
    b = B.clone()
    h = hessian(_loss(SOLVERS["CG"]), argnums=1)(b, torch.tensor(1.5, dtype=F64))
    assert not any(beneath)
    x = torch.linalg.solve(1.5 * A, b)
    torch.testing.assert_close(h, 2 * torch.dot(W, x) / 1.5**2, rtol=1e-8, atol=1e-10)


def test_jacrev_is_not_beneath(beneath: list[bool]) -> None:
    s = torch.tensor(1.5, dtype=F64)
    inner = _solver(SOLVERS["CG"])
    jac = jacrev(lambda b: inner(torch.zeros(N, dtype=F64), b, s))(B)
    assert not any(beneath)
    torch.testing.assert_close(jac, torch.linalg.inv(s * A), rtol=1e-9, atol=1e-11)


def test_closure_over_a_batched_tensor_is_exact(beneath: list[bool]) -> None:
    """``T`` reads ``scale`` from the outer ``vmap`` (a closure). Beneath, the fresh ``vmap``
    runs over the same rows in the same order at the same level (torch numbers levels by
    depth), so the closure reads each task's own ``scale``: exact."""
    bs = torch.randn(
        3, N, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(4)
    )
    scales = torch.tensor([1.0, 2.0, 3.0], dtype=F64)

    def per_task(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        @fi.implicit_root(lambda x, b: scale * (A @ x) - b, argnums=1, solve=fi.CG(rtol=1e-12))
        def inner(init: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.linalg.solve(scale * A, b)
            return out

        db: torch.Tensor = grad(lambda b: torch.dot(W, inner(torch.zeros(N, dtype=F64), b)))(b)
        return db

    db = vmap(per_task)(bs, scales)
    assert beneath == [True]
    for i in range(3):
        want = torch.linalg.solve(scales[i] * A.T, W)
        torch.testing.assert_close(db[i], want, rtol=1e-10, atol=1e-12)


def test_vmap_that_allows_randomness_is_not_beneath(beneath: list[bool]) -> None:
    bs = torch.randn(
        3, N, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(5)
    )
    s = torch.tensor(1.0, dtype=F64)
    db = vmap(grad(_loss(SOLVERS["CG"])), in_dims=(0, None), randomness="different")(bs, s)
    assert beneath == [False]
    for i in range(3):
        torch.testing.assert_close(db[i], _closed_form(bs[i], s)[0], rtol=1e-10, atol=1e-12)


def test_classic_autograd_over_func_grad_is_not_beneath(beneath: list[bool]) -> None:
    """``torch.func.grad`` of inputs that classic autograd tracks: the backward solve is part
    of classic autograd's graph, so it runs at the levels, with its second-order term; its
    derivative ``d/ds (dL/ds) = 2 (w . x*) / s^2`` is exact (it was half that before the
    rule asked classic autograd beneath the wrappers)."""
    s = torch.tensor(1.5, dtype=F64, requires_grad=True)
    ds = grad(_loss(SOLVERS["CG"]), argnums=1)(B, s)
    assert not any(beneath)
    (dds,) = torch.autograd.grad(ds, s)
    x = torch.linalg.solve(1.5 * A, B)
    torch.testing.assert_close(dds, 2 * torch.dot(W, x) / 1.5**2, rtol=1e-8, atol=1e-10)


def test_non_convergence_is_reported_beneath(beneath: list[bool]) -> None:
    s = torch.tensor(1.5, dtype=F64)
    loss = _loss(fi.CG(maxiter=1, on_failure="raise"))
    with pytest.raises(fi.ConvergenceError, match="backward pass"):
        grad(loss)(B, s)


def test_classic_autograd_over_func_jvp_is_exact() -> None:
    """Forward mode at a ``torch.func`` level, classic autograd beneath: exact second order."""
    s = torch.tensor(1.5, dtype=F64, requires_grad=True)
    loss = _loss(SOLVERS["CG"])
    ds = torch.func.jvp(lambda s: loss(B, s), (s,), (torch.ones((), dtype=F64),))[1]
    (dds,) = torch.autograd.grad(ds, s)
    x = torch.linalg.solve(1.5 * A, B)
    torch.testing.assert_close(dds, 2 * torch.dot(W, x) / 1.5**2, rtol=1e-8, atol=1e-10)

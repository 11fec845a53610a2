"""The transposed operator of the backward solves: ``_core.func.pullback``.

Inside a classic ``.backward()`` (grad mode off, no ``torch.func`` transform) an iterative
solver only applies ``u -> J^T u``, so the products come from ``torch.autograd.grad`` over a
graph recorded once. Everywhere else they must stay differentiable (``torch.func.vjp``). Both
are checked against the dense Jacobian, and the fast path is checked to be the one taken.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._functorch import eager_transforms

import funcimplicit as fi
from funcimplicit._core import func as _func

F64 = torch.float64


def tree_fn(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A map on dicts with an output that ignores the input and an input that is unused."""
    a = x["a"]  # x["b"] is unused: its product is zero
    return {"p": torch.tanh(a) * a.sum(), "q": torch.ones(2, dtype=F64), "r": a[:2] ** 3}


def dense_transpose_product(x: dict[str, torch.Tensor], u: dict[str, torch.Tensor]) -> Any:
    # J^T u from the full Jacobian, leaf by leaf (an independent reference).
    jac = torch.func.jacrev(tree_fn)(x)
    return {
        name: sum(
            torch.tensordot(u[out], jac[out][name], dims=u[out].dim()) for out in ("p", "q", "r")
        )
        for name in ("a", "b")
    }


@pytest.fixture
def point() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    x = {
        "a": torch.randn(3, generator=gen, dtype=F64),
        "b": torch.randn(2, generator=gen, dtype=F64),
    }
    u = {
        "p": torch.randn(3, generator=gen, dtype=F64),
        "q": torch.randn(2, generator=gen, dtype=F64),
        "r": torch.randn(2, generator=gen, dtype=F64),
    }
    return x, u


def test_fast_products_equal_the_dense_transpose(point: Any) -> None:
    x, u = point
    with torch.no_grad():
        product = _func.pullback(tree_fn, x, differentiable=False)
        first, second = product(u), product(u)  # the graph is kept for many products
    expected = dense_transpose_product(x, u)
    for name in ("a", "b"):
        torch.testing.assert_close(first[name], expected[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(second[name], expected[name], rtol=1e-12, atol=1e-12)
    assert not first["a"].requires_grad


def test_products_stay_differentiable_where_something_may_differentiate(point: Any) -> None:
    # Grad mode on: the product itself must carry derivatives (here in u).
    x, u = point
    u = {k: v.clone().requires_grad_() for k, v in u.items()}
    product = _func.pullback(tree_fn, x, differentiable=False)
    out = product(u)["a"].sum()
    (grad_p,) = torch.autograd.grad(out, u["p"])
    # d/du_p sum_i (J_p^T u_p)_i = J_p 1: the Jacobian of p in a, times ones.
    jac = torch.func.jacrev(lambda a: tree_fn({"a": a, "b": x["b"]})["p"])(x["a"])
    torch.testing.assert_close(grad_p, jac @ torch.ones(3, dtype=F64), rtol=1e-12, atol=1e-12)


def test_classic_backward_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # In loss.backward() through implicit_root with CG, the backward's products do not go
    # through torch.func.vjp's pullback (which calls functorch's _autograd_grad once per
    # product), and neither does the final -B^T u: autograd applies it through the graph of
    # T evaluated at the solution. The hypergradient is still exact.
    calls = {"functorch": 0}
    real = eager_transforms._autograd_grad

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["functorch"] += 1
        return real(*args, **kwargs)

    def stationarity(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x.T @ (x @ w - 1.0) + lam * w

    @fi.implicit_root(stationarity, solve=fi.CG(rtol=1e-12))
    def fit(w0: torch.Tensor, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = torch.linalg.solve(
            x.T @ x + torch.diag(lam), x.T @ torch.ones(len(x), dtype=F64)
        )
        return w

    gen = torch.Generator(device=torch.get_default_device()).manual_seed(1)
    x = torch.randn(12, 4, generator=gen, dtype=F64)
    lam = torch.full((4,), 0.5, dtype=F64, requires_grad=True)
    monkeypatch.setattr(eager_transforms, "_autograd_grad", counting)
    fit(torch.zeros(4, dtype=F64), lam, x).square().sum().backward()  # type: ignore[no-untyped-call]
    monkeypatch.undo()
    assert calls["functorch"] == 0, f"{calls['functorch']} torch.func.vjp products in backward"

    def closed_form(lam: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = torch.linalg.solve(
            x.T @ x + torch.diag(lam), x.T @ torch.ones(12, dtype=F64)
        )
        return w.square().sum()

    assert lam.grad is not None
    expected = torch.func.grad(closed_form)(lam.detach())
    torch.testing.assert_close(lam.grad, expected, rtol=1e-9, atol=1e-12)

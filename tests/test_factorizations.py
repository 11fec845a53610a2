"""How many dense factorizations one implicit solve pays, counted at the dispatcher.

A dense solver (``LU``, ``Cholesky``, ``Auto`` on a small system) factorizes the Jacobian
``J`` of one ``linear_solve`` call once; its backward (``J^T``) and jvp (``J``) solves reuse
those factors, in eager code and classic autograd (also ``create_graph`` second order). Under
``torch.func`` transforms each pass factorizes once (the backward of ``jacrev`` once for all
its vmapped cotangents, not once per column): stored plain factors cannot be mixed with a
transform level's tensors there (torch's level checks), so those counts are pinned as they
are. Every result is compared with a dense float64 ``torch.linalg.solve`` reference computed
outside the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from problems import F64, rhs, spd
from torch.utils._python_dispatch import TorchDispatchMode

import funcimplicit as fi

FACTORIZATIONS = {"linalg_lu_factor_ex", "linalg_cholesky_ex", "linalg_lu", "linalg_cholesky"}


class _CountFactorizations(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts factorization ops as they reach the dispatcher (a vmapped one counts once)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.count = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func.overloadpacket.__name__ in FACTORIZATIONS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _counted(fn: Callable[[], Any]) -> tuple[Any, int]:
    mode = _CountFactorizations()
    with mode:
        out = fn()
    return out, mode.count


def _matvec(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a @ v


SOLVERS: dict[str, Callable[[], Any]] = {
    "LU": fi.LU,
    "Cholesky": fi.Cholesky,
    "Auto": fi.Auto,
    "Auto(symmetric)": lambda: fi.Auto(symmetric=True),
}
N = 6


@pytest.fixture
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    return spd(N, 10.0, seed=3), rhs(N, seed=4)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_classic_backward_reuses_the_forward_factorization(
    name: str, problem: tuple[torch.Tensor, torch.Tensor]
) -> None:
    a0, b0 = problem
    a = a0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    solve = SOLVERS[name]()

    def forward_backward() -> tuple[torch.Tensor, ...]:
        x = fi.linear_solve(_matvec, b, a, solve=solve)
        grads = torch.autograd.grad(x.pow(2).sum(), (a, b))
        return (x.detach(), *grads)

    (x, grad_a, grad_b), count = _counted(forward_backward)
    assert count == 1  # reference: one factorization per call (the backward reuses it)
    # float64 references: x = A^{-1} b, dL/db = A^{-T} (2 x), dL/dA = -(dL/db) x^T
    x_ref = torch.linalg.solve(a0, b0)
    w_ref = torch.linalg.solve(a0.mT, 2 * x_ref)
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad_b, w_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad_a, -torch.outer(w_ref, x_ref), rtol=1e-10, atol=0)


def test_transposed_solve_by_stored_lu_factors() -> None:
    # a non-symmetric A: the backward's A^T solve must use the transposed factors
    g = torch.Generator(device=torch.get_default_device()).manual_seed(7)
    a0 = torch.randn(N, N, generator=g, dtype=F64) + 4 * torch.eye(N, dtype=F64)
    b0 = rhs(N, seed=8)
    a = a0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)

    def forward_backward() -> tuple[torch.Tensor, ...]:
        x = fi.linear_solve(_matvec, b, a, solve=fi.LU())
        grads = torch.autograd.grad(x.pow(2).sum(), (a, b))
        return (x.detach(), *grads)

    (x, grad_a, grad_b), count = _counted(forward_backward)
    assert count == 1
    x_ref = torch.linalg.solve(a0, b0)
    w_ref = torch.linalg.solve(a0.mT, 2 * x_ref)
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad_b, w_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad_a, -torch.outer(w_ref, x_ref), rtol=1e-10, atol=0)


def test_classic_second_order_reuses_it_too(problem: tuple[torch.Tensor, torch.Tensor]) -> None:
    a0, b0 = problem
    b = b0.clone().requires_grad_(True)
    u = rhs(N, seed=9)

    def second() -> torch.Tensor:
        x = fi.linear_solve(_matvec, b, a0, solve=fi.LU())
        (grad_b,) = torch.autograd.grad(x.pow(3).sum(), b, create_graph=True)
        (hvp,) = torch.autograd.grad(grad_b @ u, b)
        return hvp

    hvp, count = _counted(second)
    assert count == 1
    # L = sum x^3, x = A^{-1} b: H u = A^{-T} diag(6 x) A^{-1} u
    x_ref = torch.linalg.solve(a0, b0)
    ref = torch.linalg.solve(a0.mT, 6 * x_ref * torch.linalg.solve(a0, u))
    torch.testing.assert_close(hvp, ref, rtol=1e-10, atol=0)


def test_jacrev_factorizes_once_for_all_columns(problem: tuple[torch.Tensor, torch.Tensor]) -> None:
    a0, b0 = problem

    def jacobian() -> torch.Tensor:
        out: torch.Tensor = torch.func.jacrev(
            lambda bb: fi.linear_solve(_matvec, bb, a0, solve=fi.LU())
        )(b0)
        return out

    jac, count = _counted(jacobian)
    # the forward pass, then one for the vmapped backward over all N cotangents (not N)
    assert count == 2
    torch.testing.assert_close(jac, torch.linalg.inv(a0), rtol=1e-10, atol=1e-14)


def test_implicit_root_jacobians_factorize_once(problem: tuple[torch.Tensor, torch.Tensor]) -> None:
    a0, b0 = problem

    def optimality(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return a0 @ x - theta

    @fi.implicit_root(optimality, solve=fi.LU())
    def solver(init: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.solve(a0, theta)  # not an op the count sees
        return out

    inverse = torch.linalg.inv(a0)
    for transform in (torch.func.jacrev, torch.func.jacfwd):

        def jacobian(transform: Callable[..., Any] = transform) -> Any:
            return transform(lambda th: solver(b0, th))(b0)

        jac, count = _counted(jacobian)
        assert count == 1, transform.__name__  # one for all columns of the Jacobian
        torch.testing.assert_close(jac, inverse, rtol=1e-10, atol=1e-14)

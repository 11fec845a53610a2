"""Classic autograd over a ``torch.func`` transform of an implicit function.

A first derivative taken by ``torch.func`` (``jacrev``, ``jacfwd``, ``vjp``, ``jvp``, ``grad``)
of inputs that classic autograd also tracks (``requires_grad`` outside ``torch.func``) is
itself differentiated by ``torch.autograd.grad``. The implicit rule must then include its
second-order term: before it asked classic autograd beneath the transforms' wrappers, every
such second derivative came out half its true value. Closed form, for
``x*(s) = (s A)^{-1} b``: ``dx*/ds = -x*/s`` and ``d2x*/ds2 = 2 x*/s^2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap

import funcimplicit as fi

F64 = torch.float64
N = 3
S0 = 1.5


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    m = torch.randn(N, N, dtype=F64, generator=g)
    return m @ m.T + N * torch.eye(N, dtype=F64), torch.randn(N, dtype=F64, generator=g)


A, B = _data()


def _implicit_root(solve: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    @fi.implicit_root(lambda x, b, s: s * (A @ x) - b, argnums=(1, 2), solve=solve)
    def inner(init: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.solve(s * A, b)
        return out

    return lambda s: inner(torch.zeros(N, dtype=F64), B, s)


def _fixed_point(s: torch.Tensor) -> torch.Tensor:
    def F(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x - 0.1 * (s * (A @ x) - B)

    method = fi.Anderson(maxiter=500, rtol=1e-13)
    return fi.solve_fixed_point(F, torch.zeros(N, dtype=F64), s, method=method).value


def _linear_solve(s: torch.Tensor) -> torch.Tensor:
    return fi.linear_solve(lambda v, s: s * (A @ v), B, s, solve=fi.CG(rtol=1e-13))


SOLUTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "implicit_root-CG": _implicit_root(fi.CG(rtol=1e-13)),
    "implicit_root-Auto": _implicit_root(None),
    "solve_fixed_point": _fixed_point,
    "linear_solve": _linear_solve,
}

ONE = torch.ones((), dtype=F64)
EYE = torch.eye(N, dtype=F64)
FIRST: dict[str, Callable[[Callable[..., torch.Tensor], torch.Tensor], torch.Tensor]] = {
    "jacrev": lambda f, s: jacrev(f)(s),
    "jacfwd": lambda f, s: jacfwd(f)(s),
    "vjp": lambda f, s: torch.stack([vjp(f, s)[1](EYE[i])[0] for i in range(N)]),
    "vmap-vjp": lambda f, s: vmap(lambda e: vjp(f, s)[1](e)[0])(EYE),
    "jvp": lambda f, s: jvp(f, (s,), (ONE,))[1],
    "grad": lambda f, s: torch.stack([grad(lambda t, i=i: f(t)[i])(s) for i in range(N)]),
}


@pytest.mark.parametrize("first", list(FIRST))
@pytest.mark.parametrize("name", list(SOLUTIONS))
def test_second_derivative_through_classic_autograd(name: str, first: str) -> None:
    s = torch.tensor(S0, dtype=F64, requires_grad=True)
    d1 = FIRST[first](SOLUTIONS[name], s)
    second = torch.stack([torch.autograd.grad(d1[i], s, retain_graph=True)[0] for i in range(N)])
    x = torch.linalg.solve(S0 * A, B)
    torch.testing.assert_close(d1.detach(), -x / S0, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(second, 2 * x / S0**2, rtol=1e-7, atol=1e-9)

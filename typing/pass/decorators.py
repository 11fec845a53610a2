"""Solvers decorated with ``implicit_root`` / ``fixed_point`` keep their signatures."""

import torch

import funcimplicit as fi

dtype = torch.float64


def stationarity(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x - a


@fi.implicit_root(stationarity, solve=fi.CG())
def exact(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return a.clone()


@fi.implicit_root(stationarity, argnums=1, has_aux=True)
def exact_with_aux(init: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    return a.clone(), {"iterations": 0}


def F(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return 0.5 * z + w


@fi.fixed_point(F, solve=fi.Neumann())
def iterate(z: torch.Tensor, w: torch.Tensor, *, steps: int = 60) -> torch.Tensor:
    for _ in range(steps):
        z = F(z, w)
    return z


@fi.fixed_point(F, has_aux=True)
def iterate_with_aux(z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    steps = 0
    while steps < 60:
        z = F(z, w)
        steps += 1
    return z, steps


a = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
zero = torch.zeros(2, dtype=dtype)
torch.autograd.backward((exact(zero, a) ** 2).sum())
assert a.grad is not None
torch.testing.assert_close(a.grad, 2 * a.detach())

solution, aux = exact_with_aux(zero, a)
assert aux["iterations"] == 0
assert solution.requires_grad

w = torch.tensor([1.0], dtype=dtype, requires_grad=True)
z = iterate(torch.zeros(1, dtype=dtype), w, steps=80)
torch.autograd.backward(z.sum())
assert w.grad is not None
torch.testing.assert_close(w.grad, torch.tensor([2.0], dtype=dtype))

z, count = iterate_with_aux(torch.zeros(1, dtype=dtype), w)
assert count == 60

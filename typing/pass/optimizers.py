"""least_squares, LBFGS and ProjectedGradient with a projection taking the objective's args."""

import torch

import funcimplicit as fi

dtype = torch.float64


def r(p: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return p[0] * torch.exp(p[1] * t) - y


t = torch.linspace(0, 1, 5, dtype=dtype)
y = 2.0 * torch.exp(-t)
fit = fi.least_squares(r, torch.tensor([1.0, 0.0], dtype=dtype), t, y)
torch.testing.assert_close(fit.value, torch.tensor([2.0, -1.0], dtype=dtype))


def L(x: torch.Tensor, a: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((x - a) ** 2).sum()


def cap(x: torch.Tensor, a: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return fi.projections.box(x, -torch.inf, hi)


a, hi = torch.tensor([0.5, 3.0], dtype=dtype), torch.tensor(1.0, dtype=dtype)
capped = fi.minimize(
    L,
    torch.zeros(2, dtype=dtype),
    a,
    hi,
    method=fi.ProjectedGradient(projection=cap, step_size=1.0),
)
torch.testing.assert_close(capped.value, torch.tensor([0.5, 1.0], dtype=dtype))
smooth = fi.minimize(L, torch.zeros(2, dtype=dtype), a, hi, method=fi.LBFGS(memory=3))
torch.testing.assert_close(smooth.value, a)

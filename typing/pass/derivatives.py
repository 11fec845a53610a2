"""``root_vjp`` and ``root_jvp`` in typed code."""

import torch

import funcimplicit as fi

dtype = torch.float64


def T(x: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * x - a  # root x* = a / scale


a = torch.tensor([1.0, 4.0], dtype=dtype)
x = a / 2
grad_a, grad_scale = fi.root_vjp(T, x, (a, 2.0), torch.ones(2, dtype=dtype))
torch.testing.assert_close(grad_a, torch.full((2,), 0.5, dtype=dtype))
assert grad_scale is None  # not a tensor: no gradient

tangent = fi.root_jvp(T, x, (a, 2.0), (torch.ones(2, dtype=dtype), 0.0), solve=fi.LU())
torch.testing.assert_close(tangent, torch.full((2,), 0.5, dtype=dtype))

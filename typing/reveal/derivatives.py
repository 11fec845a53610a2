"""``root_vjp`` and ``root_jvp``: the implicit derivative rules as functions."""

from typing import Any, assert_type

import torch

import funcimplicit as fi


def T(x: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * x - a


a = torch.ones(2)
x = a / 2
pair = (x, x)

# One gradient per argument, shaped like it (None at non-tensor leaves): a tuple of Any.
assert_type(fi.root_vjp(T, x, (a, 2.0), torch.ones(2)), tuple[Any, ...])
assert_type(fi.root_vjp(T, x, [a, 2.0], x, solve=fi.LU()), tuple[Any, ...])
# The tangent of the solution, shaped like the solution.
assert_type(fi.root_jvp(T, x, (a, 2.0), (torch.ones(2), 0.0)), torch.Tensor)
assert_type(
    fi.root_jvp(lambda s, b: s, pair, (a,), (a,), solve=fi.GMRES()),
    tuple[torch.Tensor, torch.Tensor],
)

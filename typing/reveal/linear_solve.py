"""``fi.linear_solve``: the result has the type of ``b``."""

from typing import assert_type

import torch

import funcimplicit as fi


def matvec(v: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    return diag * v


def dict_matvec(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: 2 * x for k, x in v.items()}


b = torch.ones(2)
tree = {"a": torch.ones(2), "b": torch.ones(3)}

assert_type(fi.linear_solve(matvec, b, b), torch.Tensor)
assert_type(fi.linear_solve(matvec, b, b, solve=fi.CG(), init=b), torch.Tensor)
assert_type(fi.linear_solve(lambda v, d: d * v, b, b, solve=fi.LU()), torch.Tensor)
assert_type(fi.linear_solve(dict_matvec, tree, solve=fi.GMRES()), dict[str, torch.Tensor])
assert_type(fi.linear_solve(matvec, b, b, solve=None), torch.Tensor)

"""``fi.hypergradient`` returns a ``fi.Hypergradient`` named tuple."""

from typing import Any, assert_type

import torch

import funcimplicit as fi


def stationarity(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return w - 1 / (1 + lam)


def outer(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return w.square().sum()


lam = torch.ones(3)
result = fi.hypergradient(outer, stationarity, 1 / (1 + lam), lam, solve=fi.CG())
assert_type(result, fi.Hypergradient)
assert_type(result.value, torch.Tensor)
assert_type(result.adjoint, fi.LinearSolveResult[Any])
assert_type(result.adjoint.converged, torch.Tensor)
grad, value, adjoint = result
assert_type(value, torch.Tensor)
both = fi.hypergradient(outer, stationarity, 1 / (1 + lam), lam, argnums=(1,))
assert_type(both.grad, Any)

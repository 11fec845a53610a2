"""Euclidean projections onto common convex sets, for :class:`funcimplicit.ProjectedGradient`.

Each is ``P(x) = argmin_{z in C} ||z - x||``, written with differentiable torch operations
(differentiable almost everywhere, in ``x`` and in the set's parameters: bounds, radius,
total), safe under ``vmap`` and ``torch.compile``, and acting on a tensor or on a pytree
of tensors. ``nonnegative`` and ``box`` act elementwise; ``simplex`` and ``l2_ball`` treat
all leaves of ``x`` jointly as one vector.
"""

from __future__ import annotations

from typing import Any

import torch

from ._core import tree as _tree
from ._core.loop import safe_div, safe_sqrt
from ._core.tree import TensorTree, TreeT

__all__ = ["box", "l2_ball", "nonnegative", "simplex"]

Bound = torch.Tensor | float | TensorTree


def _leafwise_bound(bound: Any, x: Any, name: str) -> list[Any]:
    """One bound per leaf of ``x``: a number or tensor broadcast to every leaf, or a tree
    with the structure of ``x``."""
    leaves, spec = _tree.flatten(x)
    if isinstance(bound, int | float | torch.Tensor):
        return [bound] * len(leaves)
    bound_leaves, bound_spec = _tree.flatten(bound)
    if bound_spec != spec:
        raise ValueError(
            f"projections.box(x, lower, upper): expected {name} to be a number, a tensor or a "
            f"pytree with the structure of x ({spec}); received {bound_spec}."
        )
    return bound_leaves


def nonnegative(x: TreeT) -> TreeT:
    """Projection onto the nonnegative orthant: ``max(x, 0)`` elementwise.

    Examples:
        >>> import torch
        >>> from funcimplicit import projections
        >>> projections.nonnegative(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """
    return _tree.map_leaves(torch.relu, x)  # type: ignore[no-any-return]


def box(x: TreeT, lower: Bound, upper: Bound) -> TreeT:
    """Projection onto ``{lower <= x <= upper}``: ``min(max(x, lower), upper)`` elementwise.

    ``lower`` and ``upper`` are numbers or tensors broadcast against every leaf of ``x``, or
    pytrees with the structure of ``x``. Differentiable in them too: ``dP/dlower = 1`` where
    the lower bound is active, ``0`` elsewhere.

    Examples:
        >>> import torch
        >>> from funcimplicit import projections
        >>> projections.box(torch.tensor([-2.0, 0.5, 3.0]), -1.0, 1.0)
        tensor([-1.0000,  0.5000,  1.0000])
    """
    x_leaves, spec = _tree.flatten(x)
    lows = _leafwise_bound(lower, x, "lower")
    highs = _leafwise_bound(upper, x, "upper")
    out = []
    for leaf, lo, hi in zip(x_leaves, lows, highs, strict=True):
        lo_t = torch.as_tensor(lo, dtype=leaf.dtype, device=leaf.device)
        hi_t = torch.as_tensor(hi, dtype=leaf.dtype, device=leaf.device)
        out.append(torch.maximum(torch.minimum(leaf, hi_t), lo_t))
    return _tree.unflatten(spec, out)  # type: ignore[no-any-return]


def simplex(x: TreeT, total: torch.Tensor | float = 1.0) -> TreeT:
    """Projection onto the simplex ``{z >= 0, sum(z) = total}`` (all leaves jointly).

    ``P(x) = max(x - tau, 0)`` with the threshold ``tau`` making the sum ``total``; found by
    sorting (``O(n log n)``). ``total`` must be positive; differentiable in it.

    Examples:
        >>> import torch
        >>> from funcimplicit import projections
        >>> projections.simplex(torch.tensor([0.5, 1.5, -1.0]))
        tensor([0., 1., 0.])
    """
    v, unravel = _tree.ravel(x)
    u = torch.sort(v, descending=True).values
    total_t = torch.as_tensor(total, dtype=v.dtype, device=v.device)
    excess = torch.cumsum(u, 0) - total_t
    k = torch.arange(1, v.shape[0] + 1, dtype=v.dtype, device=v.device)
    # The support is the prefix of sorted entries with u_k > (sum_{i<=k} u_i - total) / k.
    support = (u * k > excess).to(v.dtype)
    count = support.sum()
    tau = ((u * support).sum() - total_t) / count
    return unravel(torch.relu(v - tau))


def l2_ball(x: TreeT, radius: torch.Tensor | float = 1.0) -> TreeT:
    """Projection onto ``{||z|| <= radius}`` (the norm over all leaves jointly).

    ``P(x) = x min(1, radius / ||x||)``; differentiable in ``radius`` (``x / ||x||`` outside
    the ball, ``0`` inside).

    Examples:
        >>> import torch
        >>> from funcimplicit import projections
        >>> projections.l2_ball(torch.tensor([3.0, 4.0]), 1.0)
        tensor([0.6000, 0.8000])
    """
    n = safe_sqrt(_tree.vdot(x, x))  # a zero gradient at x = 0, not NaN
    radius_t = torch.as_tensor(radius, dtype=n.dtype, device=n.device)
    outside = n > radius_t
    factor = torch.where(outside, safe_div(radius_t, torch.where(outside, n, 1.0)), 1.0)
    return _tree.scale(factor, x)

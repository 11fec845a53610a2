"""What the implicit rule checks about the user's optimality function ``T``: which tensors
it captured (a second derivative cannot reach them), and whether the point it is given is a
root of ``T`` at all."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .._core import tree as _tree
from .._core.compat import is_compiling, physical
from .._core.result import ConvergenceError, ConvergenceWarning

__all__ = ["captured", "root_check"]


def captured(outputs: Sequence[torch.Tensor], explicit: Sequence[torch.Tensor]) -> list[str]:
    """Tensors the graph of ``outputs`` reaches that are not the ``explicit`` ones.

    Walks the autograd graph recorded by ``T`` (classic, or a ``torch.func`` grad level's),
    stopping at the explicit tensors. Each ``AccumulateGrad`` node reached otherwise is a
    captured leaf that carries derivatives (a module parameter, a closure, a global).
    """
    # A node's Python object lives only while something refers to it, and a freed object's
    # id() can be reused by the next one: every node whose id is recorded is kept alive here,
    # or a fresh node could be taken for a stop or a visited one (and a capture missed; this
    # happened on a CUDA machine).
    alive = [t.grad_fn for t in explicit if t.grad_fn is not None]
    stops = {id(node) for node in alive}
    known = {id(t) for t in explicit}
    found: list[str] = []
    seen: set[int] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or id(node) in stops:
            continue
        alive.append(node)
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            if id(variable) not in known:
                found.append(f"a tensor of shape {tuple(variable.shape)}")
            continue
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return found


def root_check(z: Any, solution: Any, label: str, on_failure: str) -> None:
    """Report a returned point that is not a root: ``||T(x*)||_inf`` above the tolerance.

    Eager only (one host read); the tolerance ``eps**(1/3) * max(1, ||x*||_inf)`` (about
    6e-6 in float64, 5e-3 in float32) passes any solve run to its usual tolerances and catches
    a solver that stopped far from a root or returned the wrong point.
    """
    if on_failure == "ignore" or is_compiling():
        return
    z_leaves = [physical(t) for t in _tree.flatten(z)[0]]
    x_leaves = [physical(t) for t in _tree.flatten(solution)[0]]
    if any(t is None for t in (*z_leaves, *x_leaves)):
        return
    plain_z = [t for t in z_leaves if t is not None and t.numel()]
    if not plain_z:
        return
    plain_x = [t for t in x_leaves if t is not None and t.numel()]
    stats = torch.stack(
        [
            torch.stack([t.detach().abs().max() for t in plain_z]).max(),
            torch.stack([t.detach().abs().max() for t in plain_x]).max()
            if plain_x
            else torch.zeros((), dtype=plain_z[0].dtype, device=plain_z[0].device),
        ]
    ).double()
    residual, scale = stats.tolist()
    tolerance = torch.finfo(plain_z[0].dtype).eps ** (1 / 3) * max(1.0, scale)
    if residual <= tolerance:
        return
    if residual != residual or residual == float("inf"):
        message = (
            f"{label}: the optimality function is not finite at the returned solution "
            f"(max |T(x*, args)| = {residual:.3g}), so it has no implicit derivative."
        )
        raise ValueError(message)
    message = (
        f"{label}: the returned solution is not a root of the optimality function: "
        f"max |T(x*, args)| = {residual:.3g} > {tolerance:.3g} (eps**(1/3) * max(1, "
        "max |x*|)). Its implicit derivative is evaluated there anyway and may be wrong: run "
        "the solver to convergence (more iterations, a smaller tolerance), or check that the "
        "optimality function matches the problem the solver solves."
    )
    if on_failure == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=4)

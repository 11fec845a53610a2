"""The implicit rule for a root ``T(theta*, args) = 0``: ``root_vjp``, ``root_jvp``, and the
``autograd.Function`` that attaches them to any solution.

Differentiating ``T(theta*(a), a) = 0`` gives ``A J = -B`` with ``A = dT/dtheta`` and
``B = dT/da`` at the solution. Reverse mode, for a cotangent ``v`` of ``theta*``: solve
``A^T u = v``, then ``grad_a = -B^T u`` (one VJP of ``T`` in ``a``). Forward mode, for a
tangent ``t`` of ``a``: solve ``A s = -B t``. ``A`` is only applied (a VJP or JVP of ``T`` in
``theta``), never formed, and both solves go through ``linear_solve``'s own rule, so these
derivatives are themselves differentiable: second derivatives are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _func, _tree
from ._checks import (
    check_same_layout,
    never_compiled,
    refuse_forward_over_forward,
    refuse_whole_graph_trace,
)
from ._linear_solve import LinearProblem, solve_tree
from ._loop import physical
from ._packing import ArgsLayout, TensorPool, TreeLayout, save_inputs_and_outputs
from ._protocols import LinearSolveArg
from ._solver_base import LinearSolverBase, as_linear_solver
from ._tree import TensorTree, TreeT

__all__ = ["RootProblem", "attach", "root_jvp", "root_vjp"]


def _jacobian_matvec(fn: Callable[..., Any]) -> Callable[..., Any]:
    # s -> A s = d/de T(theta + e s, args) at e = 0
    def matvec(s: Any, theta: Any, *args: Any) -> Any:
        return _func.jvp(lambda th: fn(th, *args), (theta,), (s,))[1]

    return matvec


def _jacobian_t_matvec(fn: Callable[..., Any]) -> Callable[..., Any]:
    # u -> A^T u, the VJP of T in theta with cotangent u
    def matvec(u: Any, theta: Any, *args: Any) -> Any:
        return _func.vjp(lambda th: fn(th, *args), theta)[1](u)[0]

    return matvec


def _jacobian_linearize(fn: Callable[..., Any]) -> Callable[..., Callable[[Any], Any]]:
    # s -> A s, set up once per solve (see _func.linearize); always differentiable
    def linearize(theta: Any, *args: Any, differentiable: bool = True) -> Callable[[Any], Any]:
        return _func.linearize(lambda th: fn(th, *args), theta)

    return linearize


def _jacobian_t_linearize(fn: Callable[..., Any]) -> Callable[..., Callable[[Any], Any]]:
    # The VJP's forward pass (T at the solution) runs once per solve, not once per iteration.
    def linearize(theta: Any, *args: Any, differentiable: bool = True) -> Callable[[Any], Any]:
        return _func.pullback(lambda th: fn(th, *args), theta, differentiable=differentiable)

    return linearize


def _check_finite(tree: TensorTree, message: str) -> None:
    """Raise ``ValueError(message)`` if ``tree`` holds NaN/Inf (eager only; no-op in compile)."""
    for leaf in _tree.flatten(tree)[0]:
        plain = physical(leaf)
        if plain is not None and not bool(torch.isfinite(plain).all()):
            raise ValueError(message)


def _vjp_core(
    fn: Callable[..., Any],
    solution: Any,
    args: tuple[Any, ...],
    layout: ArgsLayout,
    tensors: Sequence[torch.Tensor],
    chosen: Sequence[int],
    cotangent: Any,
    solve: LinearSolverBase,
    label: str,
) -> tuple[Any, ...]:
    """``-B^T A^{-T} v`` for the packed argument tensors at ``chosen``."""
    out, pullback = _func.vjp(
        lambda *values: fn(solution, *layout.replaced(tensors, chosen, values)),
        *[tensors[i] for i in chosen],
    )
    check_same_layout(out, solution, label, "optimality_fn(solution, *args)", "the solution")
    _check_finite(
        cotangent,
        f"{label}: the cotangent of the solution contains NaN or Inf; the outer loss or "
        "its gradient is not finite.",
    )
    problem = LinearProblem(
        _jacobian_t_matvec(fn),
        solve,
        f"{label} (the linear solve A^T u = v of the backward pass)",
        linearize=_jacobian_t_linearize(fn),
    )
    u = solve_tree(problem, cotangent, (solution, *args))
    return tuple(pullback(_tree.scale(-1.0, u)))


def _jvp_core(
    fn: Callable[..., Any],
    solution: Any,
    layout: ArgsLayout,
    tensors: Sequence[torch.Tensor],
    chosen: Sequence[int],
    tangents: Sequence[Any],
    solve: LinearSolverBase,
    label: str,
) -> Any:
    """``A^{-1} (-B t)`` for tangents of the packed argument tensors at ``chosen``."""
    args = layout.rebuild(tensors)
    out, b_t = _func.jvp(
        lambda *values: fn(solution, *layout.replaced(tensors, chosen, values)),
        tuple(tensors[i] for i in chosen),
        tuple(tangents),
    )
    check_same_layout(out, solution, label, "optimality_fn(solution, *args)", "the solution")
    problem = LinearProblem(
        _jacobian_matvec(fn),
        solve,
        f"{label} (the linear solve A s = -B t of forward mode)",
        linearize=_jacobian_linearize(fn),
    )
    return solve_tree(problem, _tree.scale(-1.0, b_t), (solution, *args))


def root_vjp(
    optimality_fn: Callable[..., TensorTree],
    solution: TreeT,
    args: Sequence[Any],
    cotangent: TreeT,
    *,
    solve: LinearSolveArg = None,
) -> tuple[Any, ...]:
    """Reverse-mode derivative of a root: ``v^T dtheta*/dargs`` for each argument.

    With ``A = dT/dtheta`` and ``B = dT/dargs`` at ``T(solution, *args) = 0``, solves
    ``A^T u = v`` and returns ``-B^T u``, split per argument.

    Args:
        optimality_fn: ``T(theta, *args)``, a pytree shaped like ``theta``.
        solution: ``theta*`` with ``T(theta*, *args) = 0``.
        args: the arguments of ``T``; tensor leaves get gradients.
        cotangent: ``v``, shaped like ``solution``.
        solve: the linear solver for ``A^T u = v``; defaults to ``GMRES()``.

    Returns:
        One pytree per argument, shaped like it, with ``None`` at non-tensor leaves.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):  # root x* = a / 2
        ...     return 2 * x - a
        >>> a = torch.tensor([1.0, 4.0], dtype=torch.float64)
        >>> fi.root_vjp(T, a / 2, (a,), torch.ones(2, dtype=torch.float64))
        (tensor([0.5000, 0.5000], dtype=torch.float64),)
    """

    label = "root_vjp(optimality_fn, solution, args, cotangent)"
    pool = TensorPool()
    layout = pool.add_args(tuple(args))
    chosen = layout.tensor_indices()
    grads = _vjp_core(
        optimality_fn,
        solution,
        tuple(args),
        layout,
        pool.tensors,
        chosen,
        cotangent,
        as_linear_solver(solve, label),
        label,
    )
    by_index = dict(zip(chosen, grads, strict=True))
    leaves = [by_index[v] if is_tensor else None for is_tensor, v in layout.slots]
    return tuple(_tree.unflatten(layout.spec, leaves))


def root_jvp(
    optimality_fn: Callable[..., TensorTree],
    solution: TreeT,
    args: Sequence[Any],
    tangents: Sequence[Any],
    *,
    solve: LinearSolveArg = None,
) -> TreeT:
    """Forward-mode derivative of a root: ``dtheta*/dargs . tangents``.

    Solves ``A s = -B t`` with ``A = dT/dtheta`` and ``B t`` the JVP of ``T`` in its
    arguments along ``tangents``.

    Args:
        optimality_fn: ``T(theta, *args)``, a pytree shaped like ``theta``.
        solution: ``theta*`` with ``T(theta*, *args) = 0``.
        args: the arguments of ``T``.
        tangents: one tangent pytree per argument, shaped like it (tensor leaves only).
        solve: the linear solver for ``A s = -B t``; defaults to ``GMRES()``.

    Returns:
        The tangent of the solution, shaped like ``solution``.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):  # root x* = a / 2
        ...     return 2 * x - a
        >>> a = torch.tensor([1.0, 4.0], dtype=torch.float64)
        >>> fi.root_jvp(T, a / 2, (a,), (torch.ones(2, dtype=torch.float64),))
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    label = "root_jvp(optimality_fn, solution, args, tangents)"
    if len(tangents) != len(args):
        raise ValueError(
            f"{label}: expected one tangent per argument ({len(args)}); received {len(tangents)}."
        )
    pool = TensorPool()
    layout = pool.add_args(tuple(args))
    tangent_leaves = _tree.flatten(tuple(tangents))[0]
    tensor_tangents = [
        t for (is_tensor, _), t in zip(layout.slots, tangent_leaves, strict=True) if is_tensor
    ]
    positions = [v for is_tensor, v in layout.slots if is_tensor]
    chosen, values = [], []
    for i, t in zip(positions, tensor_tangents, strict=True):
        if i not in chosen:
            chosen.append(i)
            values.append(t)
    return _jvp_core(  # type: ignore[no-any-return]
        optimality_fn,
        solution,
        layout,
        pool.tensors,
        chosen,
        values,
        as_linear_solver(solve, label),
        label,
    )


@dataclass(frozen=True, eq=False)
class RootProblem:
    """What the implicit rule needs besides tensors; travels through ``Function.apply``."""

    optimality_fn: Callable[..., Any]
    solve: LinearSolverBase
    label: str
    solution: TreeLayout
    args: ArgsLayout
    differentiable: frozenset[int]  # packed indices of argument tensors that get derivatives


class _ImplicitRootFunction(torch.autograd.Function):
    """Identity on the solution in the forward pass; the implicit rule in derivatives."""

    generate_vmap_rule = True

    @staticmethod
    def forward(problem: RootProblem, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        refuse_whole_graph_trace(problem, RootProblem, "fi.implicit_root / fi.fixed_point")
        return tuple(tensors[i].clone() for i in problem.solution.index)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        # The rule is evaluated at the *output* solution, which carries its own derivative:
        # using the detached input instead would make second derivatives silently wrong.
        save_inputs_and_outputs(ctx, inputs, output)

    @staticmethod
    @never_compiled
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        problem: RootProblem = ctx.problem
        tensors, solution_leaves = _at_solution(ctx)
        chosen = [
            i
            for i in problem.args.tensor_indices()
            if i in problem.differentiable and ctx.needs_input_grad[1 + i]
        ]
        out: list[torch.Tensor | None] = [None] * ctx.count
        if not chosen:
            return (None, *out)
        v = _tree.unflatten(
            problem.solution.spec,
            [
                torch.zeros_like(s) if g is None else g
                for g, s in zip(grads, solution_leaves, strict=True)
            ],
        )
        solution = _tree.unflatten(problem.solution.spec, list(solution_leaves))
        grads_chosen = _vjp_core(
            problem.optimality_fn,
            solution,
            problem.args.rebuild(tensors),
            problem.args,
            tensors,
            chosen,
            v,
            problem.solve,
            problem.label,
        )
        for i, g in zip(chosen, grads_chosen, strict=True):
            out[i] = g
        return (None, *out)

    @staticmethod
    @never_compiled
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        problem: RootProblem = ctx.problem
        refuse_forward_over_forward(problem.label)
        tensors, solution_leaves = _at_solution(ctx)
        dt = tangents[1:]
        chosen = [
            i
            for i in problem.args.tensor_indices()
            if i in problem.differentiable and dt[i] is not None
        ]
        if not chosen:
            return tuple(torch.zeros_like(s) for s in solution_leaves)
        solution = _tree.unflatten(problem.solution.spec, list(solution_leaves))
        s = _jvp_core(
            problem.optimality_fn,
            solution,
            problem.args,
            tensors,
            chosen,
            [dt[i] for i in chosen],
            problem.solve,
            problem.label,
        )
        return tuple(_tree.flatten(s)[0])


def _at_solution(ctx: Any) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The packed tensors with the solution slots replaced by the differentiable outputs."""
    problem: RootProblem = ctx.problem
    saved = ctx.saved_tensors
    tensors = list(saved[: ctx.count])
    outputs = saved[ctx.count :]
    for i, out in zip(problem.solution.index, outputs, strict=True):
        tensors[i] = out
    return tensors, outputs


def attach(
    optimality_fn: Callable[..., Any],
    solution: Any,
    args: tuple[Any, ...],
    differentiable: Sequence[int],
    solve: LinearSolverBase,
    label: str,
) -> Any:
    """Return ``solution`` carrying implicit derivatives with respect to ``args[k]`` for ``k``
    in ``differentiable`` (positions in ``args``); other arguments are constants."""
    pool = TensorPool()
    solution_layout = pool.add_tree(_tree.map_leaves(torch.Tensor.detach, solution))
    constants = set(range(len(args))) - set(differentiable)
    args = tuple(
        _tree.map_leaves(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, a)
        if k in constants
        else a
        for k, a in enumerate(args)
    )
    args_layout = pool.add_args(args)
    marked: set[int] = set()
    for k in differentiable:
        for leaf in _tree.flatten(args[k])[0]:
            if isinstance(leaf, torch.Tensor):
                marked.add(pool.add(leaf))
    problem = RootProblem(
        optimality_fn, solve, label, solution_layout, args_layout, frozenset(marked)
    )
    out = _ImplicitRootFunction.apply(problem, *pool.tensors)  # type: ignore[no-untyped-call]
    return _tree.unflatten(solution_layout.spec, list(out))

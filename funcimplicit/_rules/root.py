"""The implicit rule for a root ``T(theta*, args) = 0``: ``attach``, which gives any solution
its implicit derivatives (``root_vjp`` and ``root_jvp`` as plain functions: ``derivatives.py``).

Differentiating ``T(theta*(a), a) = 0`` gives ``A dtheta* = -B da`` with ``A = dT/dtheta``
and ``B = dT/da`` at the solution. ``attach`` evaluates ``z = T(theta*, args)`` once, at the
detached solution, as ordinary code: autograd and ``torch.func`` then see everything ``T``
touches (explicit arguments, module parameters, closures, containers) and carry ``dz = B da``
for all of it. One ``autograd.Function`` of ``z`` returns ``theta*`` and maps

    dtheta* = -A^{-1} dz          (forward mode: one solve with A)
    grad_z  = -A^{-T} v           (reverse mode: one solve with A^T for a cotangent v)

so first derivatives are exact for whatever ``T`` reads. ``A`` is only applied (a VJP or JVP
of ``T`` in ``theta``), never formed, and both solves go through ``linear_solve``'s own rule.

Second order. ``z`` is evaluated at the detached solution, so the derivative of ``B`` along
``theta*(a)`` is missing from ``grad_z``'s graph. For explicit arguments the rule adds the
zero-valued term ``B(theta_out)^T (-u) - B(theta*)^T (-u)`` (``theta_out``: the output, which
carries its own derivative), which restores it exactly. A tensor ``T`` merely captures cannot
be reached that way: where a second derivative could flow through one, the rule refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import (
    check_same_layout,
    derivatives_possible,
    refuse_forward_over_forward,
    refuse_whole_graph_trace,
)
from .._core.compat import (
    differentiating_levels,
    forward_ad_level,
    is_compiling,
    is_transformed,
    never_compiled,
    never_traced,
    physical,
    transform_levels,
    without_saved_tensor_hooks,
)
from .._core.result import report
from .._linear.base import LinearSolverBase
from .derivatives import check_finite, forward_solve, transposed_solve
from .kernels import compiled_adjoint, plain
from .linear import solve_beneath, solve_tree
from .packing import ArgsLayout, TensorPool, TreeLayout
from .root_checks import captured, root_check

__all__ = ["RootProblem", "attach"]


# ---------------------------------------------------------------------------------------------
# What a callback touches, and when a second derivative can flow.


def _carries_derivatives(tensors: Sequence[torch.Tensor]) -> bool:
    if forward_ad_level() >= 0:
        return True
    return any(t.requires_grad or is_transformed(t) for t in tensors)


@dataclass(frozen=True, eq=False)
class RootProblem:
    """What the implicit rule needs besides tensors; travels through ``Function.apply``.

    Packed tensors: ``z`` (``T`` at the detached solution), the detached solution, then the
    tensors of the arguments.
    """

    optimality_fn: Callable[..., Any]
    solve: LinearSolverBase
    label: str
    z: TreeLayout
    solution: TreeLayout
    args: ArgsLayout
    differentiable: frozenset[int]  # packed indices of explicit tensors that get derivatives
    captured: tuple[str, ...]  # what T reaches besides them (refused for second order)
    level: int | None  # the innermost differentiating torch.func level at attach time
    compiled: bool = False  # attached while dynamo traced the caller (torch.compile)

    def second_order(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether what the rule computes now may itself be differentiated."""
        levels = transform_levels()
        if levels is None:
            return True
        others = [lv for lv in differentiating_levels(levels) if lv != self.level]
        if others:
            return True
        if self.level is not None:
            # Nothing differentiates at another level; but classic autograd records beneath
            # the wrappers where the plain tensors require grad (torch.autograd.grad of the
            # result of torch.func.grad): then this is differentiated too.
            return torch.is_grad_enabled() and any(_classic_grad(t) for t in tensors)
        return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

    def gap(
        self, tensors: Sequence[Any], solution: Any, chosen: Sequence[int]
    ) -> Callable[..., Any]:
        """``a -> T(theta_out, a) - T(theta*, a)`` in the explicit tensors at ``chosen``: zero
        in value, it carries the derivative of ``B`` along the solution (second order)."""
        detached = self.solution.rebuild(tensors)

        def gap(*values: torch.Tensor) -> Any:
            moved = self.args.replaced(tensors, chosen, values)
            return _tree.sub(
                self.optimality_fn(solution, *moved), self.optimality_fn(detached, *moved)
            )

        return gap

    def refusecaptured(self) -> None:
        if not self.captured:
            return
        raise NotImplementedError(
            f"{self.label}: a second derivative through a tensor the optimality function "
            f"captures ({', '.join(self.captured[:3])}"
            + (", ..." if len(self.captured) > 3 else "")
            + ") is not supported: the implicit rule differentiates captured tensors to "
            "first order only. Pass the tensors as explicit arguments of the solver and the "
            "optimality function (for an nn.Module, its parameters through "
            "torch.func.functional_call), which makes second derivatives exact."
        )


class _ImplicitRootFunction(torch.autograd.Function):
    """``theta*`` from ``(z, theta*, args)``; derivatives ``-A^{-1} dz`` / ``-A^{-T} v``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(problem: RootProblem, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        refuse_whole_graph_trace(problem, RootProblem, "fi.implicit_root / fi.fixed_point")
        return tuple(tensors[i].clone() for i in problem.solution.index)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        # z is not needed again; the rule is evaluated at the *output* solution, which carries
        # its own derivative (the detached input alone would lose second derivatives).
        problem, *tensors = inputs
        ctx.problem = problem
        kept = tensors[len(problem.z.index) :]
        ctx.save_for_backward(*kept, *output)
        ctx.save_for_forward(*kept, *output)

    @staticmethod
    @never_compiled
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        problem: RootProblem = ctx.problem
        tensors, outputs = _unpack(ctx)
        result: list[torch.Tensor | None] = [None] * len(tensors)
        if all(g is None for g in grads):
            return (None, *result)
        v = _tree.unflatten(
            problem.solution.spec,
            [torch.zeros_like(o) if g is None else g for g, o in zip(grads, outputs, strict=True)],
        )
        not_finite = (
            f"{problem.label}: the cotangent of the solution contains NaN or Inf; the outer "
            "loss or its gradient is not finite."
        )
        solution = _tree.unflatten(problem.solution.spec, list(outputs))
        args = problem.args.rebuild(tensors)
        explicit = [t for t in tensors if isinstance(t, torch.Tensor)]
        second = problem.second_order([*outputs, *_tree.flatten(v)[0], *explicit])
        transposed = transposed_solve(problem.optimality_fn, problem.solve, problem.label)
        u = None
        if problem.compiled and not second and _classic_first_order([*outputs, *tensors, *grads]):
            # The caller was compiled: A^T u = v by a solve compiled once per operator, and
            # one host read for both checks (finite cotangent, converged solve).
            outcome = compiled_adjoint(problem.optimality_fn, problem.solve, solution, args, v)
            if outcome is not None:
                adjoint, finite = outcome
                finite_ok, converged = torch.stack([finite, adjoint.converged.all()]).tolist()
                if not finite_ok:
                    raise ValueError(not_finite)
                if not converged:
                    solver = problem.solve
                    report(adjoint, solver.on_failure, transposed.label, solver.failure_hint)
                u = adjoint.solution
        if u is None:
            check_finite(v, not_finite)
            if not second and not problem.captured:
                # First order under torch.func.grad (or vmap(grad)): the solve beneath the
                # transforms' wrappers, at plain cost.
                u = solve_beneath(transposed, v, (solution, *args), problem.level)
        if u is None:
            if second:
                problem.refusecaptured()
            # With captured tensors, a first-order solve runs directly, not through
            # linear_solve's Function: that forward runs below the current torch.func level,
            # where a tensor T captured from that level cannot be read (a torch INTERNAL
            # ASSERT under vmap(grad)).
            u = solve_tree(
                transposed, v, (solution, *args), differentiable=second or not problem.captured
            )
        minus_u = _tree.scale(-1.0, u)
        for k, g in enumerate(_tree.flatten(minus_u)[0]):
            result[k] = g
        chosen = [i for i in sorted(problem.differentiable) if ctx.needs_input_grad[1 + i]]
        if second and chosen:
            # B(theta_out)^T (-u) - B(theta*)^T (-u): zero, but differentiable along theta_out.
            gap = problem.gap(tensors, solution, chosen)
            _, pullback = _func.vjp(gap, *[tensors[i] for i in chosen])
            for i, g in zip(chosen, pullback(minus_u), strict=True):
                result[i] = g
        return (None, *result)

    @staticmethod
    @never_compiled
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        problem: RootProblem = ctx.problem
        refuse_forward_over_forward(problem.label)
        tensors, outputs = _unpack(ctx)
        nz = len(problem.z.index)
        dz = [
            torch.zeros_like(o) if t is None else t
            for t, o in zip(tangents[1 : 1 + nz], outputs, strict=True)
        ]
        rhs = _tree.scale(-1.0, _tree.unflatten(problem.solution.spec, dz))
        solution = _tree.unflatten(problem.solution.spec, list(outputs))
        args = problem.args.rebuild(tensors)
        dt = tangents[1:]
        moving = [i for i in sorted(problem.differentiable) if dt[i] is not None]
        explicit = [t for t in tensors if isinstance(t, torch.Tensor)]
        second = problem.second_order([*outputs, *dz, *explicit])
        if second:
            problem.refusecaptured()
        if moving and second:
            # B(theta_out) t - B(theta*) t: zero, but differentiable along theta_out.
            _, b_gap = _func.jvp(
                problem.gap(tensors, solution, moving),
                tuple(tensors[i] for i in moving),
                tuple(dt[i] for i in moving),
            )
            rhs = _tree.sub(rhs, b_gap)
        s = solve_tree(
            forward_solve(problem.optimality_fn, problem.solve, problem.label),
            rhs,
            (solution, *args),
            differentiable=second or not problem.captured,
        )
        return tuple(_tree.flatten(s)[0])


def _classic_grad(tensor: torch.Tensor) -> bool:
    """Whether classic autograd tracks ``tensor`` beneath its ``torch.func`` wrappers (unknown
    counts as tracked)."""
    plain = physical(tensor)
    return plain is None or plain.requires_grad


def _classic_first_order(tensors: Sequence[Any]) -> bool:
    """Whether the backward runs in plain classic autograd: no ``torch.func`` transform, no
    forward-AD level, grad mode off, and only plain tensors (what compiled code can take)."""
    if torch.is_grad_enabled() or forward_ad_level() >= 0 or transform_levels() != []:
        return False
    return plain(tensors)


def _unpack(ctx: Any) -> tuple[list[Any], tuple[torch.Tensor, ...]]:
    """The packed tensors (``z`` slots empty) and the differentiable output solution."""
    problem: RootProblem = ctx.problem
    saved = ctx.saved_tensors
    nz = len(problem.z.index)
    count = len(saved) - len(problem.solution.index)
    tensors: list[Any] = [None] * nz + list(saved[:count])
    return tensors, tuple(saved[count:])


def attach(
    optimality_fn: Callable[..., Any],
    solution: Any,
    args: tuple[Any, ...],
    differentiable: Sequence[int],
    solve: LinearSolverBase,
    label: str,
    *,
    check_root: bool = True,
) -> Any:
    """Return ``solution`` carrying implicit derivatives with respect to ``args[k]`` for ``k``
    in ``differentiable`` (positions in ``args``; other arguments are constants) and to every
    tensor ``optimality_fn`` reaches by itself (module parameters, closures, globals).

    With ``check_root``, a solution that is not a root is reported in eager mode (a
    ``ConvergenceWarning``, or ``ConvergenceError`` where the solver's ``on_failure`` says
    ``"raise"``).
    """
    x = _tree.map_leaves(torch.Tensor.detach, solution)
    chosen = set(differentiable)
    args = tuple(a if k in chosen else _tree.detached(a) for k, a in enumerate(args))
    if not derivatives_possible():
        if check_root:
            with torch.no_grad():
                z = optimality_fn(x, *args)
            check_same_layout(z, x, label, "optimality_fn(solution, *args)", "the solution")
            root_check(z, x, label, getattr(solve, "on_failure", "warn"))
        return x
    if is_compiling():
        z = optimality_fn(x, *args)
    else:
        with without_saved_tensor_hooks():
            z = optimality_fn(x, *args)
    check_same_layout(z, x, label, "optimality_fn(solution, *args)", "the solution")
    if check_root:
        root_check(z, x, label, getattr(solve, "on_failure", "warn"))
    if not is_compiling() and not _carries_derivatives(_tree.flatten(z)[0]):
        return x
    # Called with a constant: the packing below runs eagerly (see _apply_rule).
    return _apply_rule(optimality_fn, solve, label, z, x, args, chosen, is_compiling())


@never_traced(
    "fi.implicit_root / fi.fixed_point: torch.compile(..., fullgraph=True) cannot trace through "
    "an implicit function on this torch: dynamo does not support an autograd.Function with a "
    "custom jvp rule, which carries the implicit derivative. Compile without fullgraph=True "
    "(the rule then runs eagerly and is correct), or, for a meta-gradient compiled as one "
    "graph (also under vmap), use fi.hypergradient, which is written with plain operations."
)
def _apply_rule(
    optimality_fn: Callable[..., Any],
    solve: LinearSolverBase,
    label: str,
    z: Any,
    x: Any,
    args: tuple[Any, ...],
    chosen: set[int],
    compiled: bool = False,
) -> Any:
    """Pack ``z``, the solution and the arguments into the rule's Function.

    Never traced by dynamo: the Function breaks the caller's graph anyway, and tracing the
    packing would guard on the identity of per-call objects (``id(tensor)`` de-duplicates
    the leaves), so every call with new tensors recompiled the caller until dynamo's
    recompile limit, then ran eagerly. Run eagerly, the packing also reads the transform
    stack and ``z``'s graph exactly as in an eager call. ``compiled`` says whether the
    caller was being compiled (the backward then uses a compiled solve, see ``kernels``).
    """
    z_leaves, z_spec = _tree.flatten(z)
    # Each z leaf gets a slot of its own (a leaf T returned twice, or returned unchanged,
    # would otherwise share one with the solution or an argument).
    taken = {id(t) for t in (*_tree.flatten(x)[0], *_tree.flatten(args)[0])}
    distinct: list[torch.Tensor] = []
    for leaf in z_leaves:
        distinct.append(leaf.view_as(leaf) if id(leaf) in taken else leaf)
        taken.add(id(leaf))
    pool = TensorPool()
    z_layout = pool.add_tree(_tree.unflatten(z_spec, distinct))
    solution_layout = pool.add_tree(x)
    args_layout = pool.add_args(args)
    explicit: list[torch.Tensor] = []
    marked: set[int] = set()
    for k in chosen:
        for leaf in _tree.flatten(args[k])[0]:
            if isinstance(leaf, torch.Tensor):
                marked.add(pool.add(leaf))
                explicit.append(leaf)
    levels = transform_levels() or []
    touched = captured(z_leaves, explicit)
    differentiating = differentiating_levels(levels)
    problem = RootProblem(
        optimality_fn,
        solve,
        label,
        z_layout,
        solution_layout,
        args_layout,
        frozenset(marked),
        tuple(touched),
        differentiating[-1] if differentiating else None,
        compiled,
    )
    out = _ImplicitRootFunction.apply(problem, *pool.tensors)  # type: ignore[no-untyped-call]
    return _tree.unflatten(solution_layout.spec, list(out))

"""``linear_solve``: ``x = A(args)^{-1} b`` with derivatives by the implicit rule.

Differentiating ``A(a) x = b`` gives ``A dx = db - (dA) x``. Reverse mode, for a cotangent
``g`` of ``x``: solve ``A^T w = g``; then ``grad_b = w`` and ``grad_a = -d<w, A(a) x>/da``.
Forward mode: solve ``A dx = db - (dA) x``. Both solves go through this same rule, so every
derivative is itself differentiable (second order is exact) and the solver's iterations are
never differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from .._core import compat
from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import (
    check_same_layout,
    derivatives_possible,
    floating_leaves,
    refuse_forward_over_forward,
    refuse_whole_graph_trace,
)
from .._core.compat import never_compiled
from .._core.result import ConvergenceError, LinearSolveResult, report
from .._core.tree import TensorTree, TreeT
from .._linear.adapter import as_linear_solver
from .._linear.auto import reusing
from .._linear.base import LinearSolveArg, LinearSolverBase, rounding_slack
from .._linear.dense import cache_of
from .packing import ArgsLayout, TensorPool, TreeLayout, save_inputs_and_outputs

__all__ = ["LinearProblem", "linear_solve", "solve_tree"]


@dataclass(frozen=True, eq=False)
class LinearProblem:
    """Everything non-tensor about one solve; travels through ``Function.apply`` as is.

    ``linearize(*args, differentiable=...)``, when given, returns ``v -> matvec(v, *args)``
    (differentiable, or not when the solver only applies it) with work that does
    not depend on ``v`` done once (e.g. a VJP's forward pass) instead of once per iteration.
    """

    matvec: Callable[..., Any]
    solver: LinearSolverBase
    label: str
    transposed: bool = False
    linearize: Callable[..., Callable[[Any], Any]] | None = None
    rhs: TreeLayout | None = None
    init: TreeLayout | None = None
    args: ArgsLayout | None = None
    presolved: bool = False  # ``init`` is the solution, found by :func:`solve_tree`
    #: Whether ``matvec`` applies ``J^T`` (``True``) or ``J`` (``False``), ``J`` the Jacobian
    #: of the implicit call this solve belongs to; ``None``: unrelated. Lets a dense solver
    #: with a factor cache reuse one factorization for all solves of that call.
    adjoint: bool | None = None

    def orientation(self) -> bool | None:
        """Whether this solve's operator is ``J^T`` (it is ``J`` when ``False``)."""
        return None if self.adjoint is None else self.adjoint != self.transposed

    def apply_a(self, v: Any, args: tuple[Any, ...]) -> Any:
        """``A(args) v`` (or ``A(args)^T v`` when transposed), without the ridge."""
        if not self.transposed:
            return self.matvec(v, *args)
        return _transpose_apply(self.matvec, v, args)

    def operator(self, like: Any, args: tuple[Any, ...]) -> Callable[[Any], Any]:
        """``v -> A v`` (or ``A^T v``) for fixed ``args``, set up once for many products."""
        # A solver that applies A^T through a VJP needs a differentiable operator.
        solver = self.solver
        differentiable = solver.needs_transpose or not solver.applies_operator_only
        if self.transposed:
            return _func.pullback(
                lambda z: self.matvec(z, *args),
                _tree.zeros_like(like),
                differentiable=differentiable,
            )
        if self.linearize is not None:
            return self.linearize(*args, differentiable=differentiable)
        return lambda v: self.matvec(v, *args)


def run_square(
    solver: LinearSolverBase,
    operator: Callable[[Any], Any],
    rhs: Any,
    init: Any,
    adjoint: bool | None = None,
) -> LinearSolveResult[Any]:
    """``solver.run``, judged on the square system ``A x = rhs`` these rules solve.

    ``adjoint`` (see :meth:`LinearProblem.orientation`) tells a solver's factor cache which
    of ``J``, ``J^T`` the operator applies, for the duration of this solve.

    A least-squares solver judges its result by the normal equations, which a singular square
    system satisfies at a wrong ``x`` (``A^T b = 0`` gives ``x = 0`` with zero tolerance): here
    its true residual must also meet the tolerance, as for every other solver.
    """
    cache = cache_of(solver)
    if cache is None:
        result = solver.run(operator, rhs, init)
    else:
        cache.adjoint = adjoint
        try:
            result = solver.run(operator, rhs, init)
        finally:
            cache.adjoint = None
    if not solver.least_squares or solver.ridge:
        return result
    dtype = _tree.flatten(rhs)[0][0].dtype
    rtol = solver._default_rtol(dtype) if solver.rtol is None else solver.rtol
    tolerance = torch.clamp(rtol * _tree.norm(rhs), min=solver.atol)
    residual = _tree.norm(_tree.sub(rhs, operator(result.solution)))
    converged = result.converged & (residual <= tolerance + rounding_slack(rhs))
    return replace(result, residual_norm=residual, tolerance=tolerance, converged=converged)


def _transpose_apply(matvec: Callable[..., Any], v: Any, args: tuple[Any, ...]) -> Any:
    # A^T v is the VJP of the linear map z -> A z (at any point, here 0) with cotangent v.
    _, pullback = _func.vjp(lambda z: matvec(z, *args), _tree.zeros_like(v))
    return pullback(v)[0]


class _LinearSolveFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(problem: LinearProblem, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        refuse_whole_graph_trace(problem, LinearProblem, "fi.linear_solve")
        assert problem.rhs is not None
        assert problem.args is not None
        rhs = problem.rhs.rebuild(tensors)
        init = None if problem.init is None else problem.init.rebuild(tensors)
        args = problem.args.rebuild(tensors)
        if problem.presolved:
            solution = init
        else:
            operator = problem.operator(rhs, args)
            result = run_square(problem.solver, operator, rhs, init, problem.orientation())
            report(result, problem.solver.on_failure, problem.label, problem.solver.failure_hint)
            solution = result.solution
        leaves, _ = _tree.flatten(solution)
        ids = {id(t) for t in tensors}
        # An output may not be one of the inputs (autograd.Function rule): copy it then.
        return tuple(leaf.clone() if id(leaf) in ids else leaf for leaf in leaves)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        save_inputs_and_outputs(ctx, inputs, output)

    @staticmethod
    @never_compiled
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        problem: LinearProblem = ctx.problem
        saved = ctx.saved_tensors
        tensors, x_leaves = saved[: ctx.count], saved[ctx.count :]
        needs = ctx.needs_input_grad[1:]
        out: list[torch.Tensor | None] = [None] * ctx.count
        if not any(needs):
            return (None, *out)
        g_leaves = [
            torch.zeros_like(x) if g is None else g for g, x in zip(grads, x_leaves, strict=True)
        ]
        assert problem.rhs is not None
        assert problem.args is not None
        layout = problem.args
        g = _tree.unflatten(problem.rhs.spec, g_leaves)
        x = _tree.unflatten(problem.rhs.spec, list(x_leaves))
        args = layout.rebuild(tensors)
        # (A^T + ridge I) w = g   (the transposed solve goes through this same rule)
        w = solve_tree(replace(problem, transposed=not problem.transposed), g, args)
        for i, leaf in zip(problem.rhs.index, _tree.flatten(w)[0], strict=True):
            out[i] = leaf if out[i] is None else out[i] + leaf
        wanted = [i for i in layout.tensor_indices() if needs[i]]
        if wanted:
            # grad_a = -d<w, A(a) x>/da, and for the transposed system -d<A(a) w, x>/da.
            point, cotangent = (w, x) if problem.transposed else (x, w)

            def applied(*chosen: torch.Tensor) -> Any:
                return problem.matvec(point, *layout.replaced(tensors, wanted, chosen))

            _, pullback = _func.vjp(applied, *[tensors[i] for i in wanted])
            for i, grad in zip(wanted, pullback(cotangent), strict=True):
                out[i] = -grad if out[i] is None else out[i] - grad
        return (None, *out)

    @staticmethod
    @never_compiled
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        problem: LinearProblem = ctx.problem
        refuse_forward_over_forward(problem.label)
        saved = ctx.saved_tensors
        tensors, x_leaves = saved[: ctx.count], saved[ctx.count :]
        dt = tangents[1:]
        assert problem.rhs is not None
        assert problem.args is not None
        layout = problem.args
        x = _tree.unflatten(problem.rhs.spec, list(x_leaves))
        rhs_t = [
            dt[i] if dt[i] is not None else torch.zeros_like(x_leaves[k])
            for k, i in enumerate(problem.rhs.index)
        ]
        rhs = _tree.unflatten(problem.rhs.spec, rhs_t)
        moving = [i for i in layout.tensor_indices() if dt[i] is not None]
        if moving:
            # (A + ridge I) dx = db - (dA) x, with (dA) x the JVP of a -> A(a) x.
            def applied(*chosen: torch.Tensor) -> Any:
                return problem.apply_a(x, layout.replaced(tensors, moving, chosen))

            _, da_x = _func.jvp(
                applied, tuple(tensors[i] for i in moving), tuple(dt[i] for i in moving)
            )
            rhs = _tree.sub(rhs, da_x)
        dx = solve_tree(problem, rhs, layout.rebuild(tensors))
        return tuple(_tree.flatten(dx)[0])


def solve_tree(
    problem: LinearProblem,
    rhs: Any,
    args: tuple[Any, ...],
    init: Any = None,
    *,
    differentiable: bool = True,
) -> Any:
    """Solve ``problem`` for ``rhs`` through the differentiable rule; return the solution tree.

    Where nothing can differentiate the result (a classic ``.backward()`` without
    ``create_graph``, or ``differentiable=False`` from a caller that knows), the solver runs
    directly, without the rule's packing.
    """
    if not differentiable or not derivatives_possible():
        operator = problem.operator(rhs, args)
        result = run_square(problem.solver, operator, rhs, init, problem.orientation())
        report(result, problem.solver.on_failure, problem.label, problem.solver.failure_hint)
        return result.solution
    # Solve here, at the caller's torch.func levels, on detached values; the Function only
    # attaches the rule. Inside Function.forward the outer levels are lowered, and a
    # callback closing over a tensor of an outer vmap/grad (a preconditioner r / d_task
    # under vmap(grad)) crashed torch there (INTERNAL ASSERT wrapper == nullptr).
    solution = _run_detached(
        problem.solver, problem.operator, rhs, args, init, problem.label, problem.orientation()
    )
    pool = TensorPool()
    rhs_layout = pool.add_tree(rhs)
    init_layout = pool.add_tree(solution)
    problem = replace(
        problem, rhs=rhs_layout, init=init_layout, args=pool.add_args(args), presolved=True
    )
    out = _LinearSolveFunction.apply(problem, *pool.tensors)  # type: ignore[no-untyped-call]
    return _tree.unflatten(rhs_layout.spec, list(out))


def solve_beneath(
    problem: LinearProblem, rhs: Any, args: tuple[Any, ...], level: int | None
) -> Any | None:
    """:func:`solve_tree` of a first-order backward pass at ``grad`` level ``level``, run on
    the tensors beneath the transforms and outside them; ``None`` where that cannot be done
    soundly (the caller then solves at its levels, as before: slower, the same answer).

    Under ``torch.func.grad`` every operation of a solve at the grad level goes through the
    transform's wrappers, although nothing differentiates it (the caller checked: no other
    differentiating level). Beneath them the solve runs on plain tensors, at plain cost; under
    one ``vmap`` around the ``grad`` (iMAML's per-task meta-gradients) it runs under a fresh
    ``vmap`` of the physical batch, and its result is batched again at the outer level.

    Refused: any other stack of transforms, a ``vmap`` with random operations allowed, a
    tensor wrapped otherwise, a tensor that classic autograd records (``requires_grad`` beneath
    the wrappers, grad mode on), and a solve whose result comes out wrapped (its operator
    closes over a tensor of the transforms) or that fails otherwise.
    """
    if level is None:  # attached outside torch.func: nothing to look beneath
        return None
    levels = compat.transform_levels()
    if levels is None or not compat.can_set_aside():
        return None
    if levels == [("Grad", level)]:
        vmap_level = None
    elif len(levels) == 2 and levels[0][0] == "Vmap" and levels[1] == ("Grad", level):
        vmap_level = levels[0][1]
    else:
        return None
    rhs_leaves, rhs_spec = _tree.flatten(rhs)
    arg_leaves, arg_spec = _tree.flatten(args)
    at = [i for i, leaf in enumerate(arg_leaves) if isinstance(leaf, torch.Tensor)]
    with compat.outside_transforms():  # (unbatching moves a dimension: an op, not recorded)
        seen = [
            compat.beneath_grad(t, level, vmap_level)
            for t in [*rhs_leaves, *(arg_leaves[i] for i in at)]
        ]
    if not all(ok for ok, _ in seen):
        return None
    plain = [pair[0] for _, pair in seen]
    dims = [pair[1] for _, pair in seen]
    if torch.is_grad_enabled() and any(t.requires_grad for t in plain):
        return None
    count = len(rhs_leaves)

    def solve(rhs_plain: list[torch.Tensor], args_plain: list[torch.Tensor]) -> list[torch.Tensor]:
        everything = list(arg_leaves)
        for i, leaf in zip(at, args_plain, strict=True):
            everything[i] = leaf
        out = solve_tree(
            problem,
            _tree.unflatten(rhs_spec, rhs_plain),
            _tree.unflatten(arg_spec, everything),
            differentiable=False,
        )
        return _tree.flatten(out)[0]

    batched = vmap_level is not None and any(d is not None for d in dims)
    try:
        with compat.outside_transforms():
            if batched:
                out = torch.func.vmap(solve, in_dims=(dims[:count], dims[count:]))(
                    plain[:count], plain[count:]
                )
            else:
                out = solve(plain[:count], plain[count:])
    except ConvergenceError:
        raise
    except Exception:  # e.g. an operator reading a tensor of the transforms set aside
        return None
    if any(compat.is_transformed(t) for t in out):
        return None  # the operator closes over a tensor of the transforms
    if batched:
        assert vmap_level is not None
        out = [compat.rebatch(t, vmap_level) for t in out]
    return _tree.unflatten(rhs_spec, out)


def _run_detached(
    solver: LinearSolverBase,
    operator: Callable[[Any, tuple[Any, ...]], Callable[[Any], Any]],
    rhs: Any,
    args: tuple[Any, ...],
    init: Any,
    label: str,
    adjoint: bool | None = None,
) -> Any:
    """``solver.run`` on detached values, recording nothing, reported; the solution tree."""
    rhs, args, init = _tree.detached((rhs, args, init))
    with torch.no_grad():
        result = run_square(solver, operator(rhs, args), rhs, init, adjoint)
    report(result, solver.on_failure, label, solver.failure_hint)
    return result.solution


def _normal_matvec(matvec: Callable[..., Any]) -> Callable[..., Any]:
    # v -> A^T A v, with A^T from the VJP of the linear map (at 0, taken inside: no captures).
    def normal(v: Any, *args: Any) -> Any:
        _, pullback = _func.vjp(lambda z: matvec(z, *args), _tree.zeros_like(v))
        return pullback(matvec(v, *args))[0]

    return normal


def linear_solve(
    matvec: Callable[..., TreeT],
    b: TreeT,
    *args: Any,
    solve: LinearSolveArg = None,
    init: TreeT | None = None,
) -> TreeT:
    """Solve ``(A(args) + ridge I) x = b`` and differentiate ``x`` in ``b`` and ``args``.

    Derivatives use the implicit rule (a transposed solve in reverse mode, a solve with
    ``A`` in forward mode), never the solver's iterations, and compose with every
    ``torch.func`` transform (grad, vjp, jacrev, jvp, jacfwd, hessian, vmap) and with
    classic autograd. ``matvec`` may be any callable, an ``nn.Linear`` or a closure included:
    every tensor it reads gets its first derivative (second derivatives are exact for ``b``
    and ``args``, refused through captured tensors).

    Args:
        matvec: ``matvec(v, *args) -> A v``, linear in ``v``; ``v`` and the output are
            pytrees shaped like ``b`` (for a least-squares solver such as ``Normal``, ``v`` is
            shaped like ``init``).
        b: the right-hand side, a pytree of real floating tensors (0-d allowed).
        *args: pytrees passed to ``matvec``; tensor leaves are differentiable, other leaves
            pass through untouched.
        solve: the linear solver; defaults to ``Auto()`` (any square ``A``: dense LU up to
            500 unknowns, GMRES beyond). Use ``Auto(symmetric=True)``, ``CG`` or
            ``Cholesky`` for symmetric positive definite ``A``.
        init: an initial guess (warm start), not differentiated.

    Returns:
        ``x`` with the structure of ``b`` (of ``init`` for a least-squares solver).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def matvec(v, diag):
        ...     return diag * v
        >>> diag = torch.tensor([2.0, 4.0], dtype=torch.float64, requires_grad=True)
        >>> b = torch.tensor([2.0, 2.0], dtype=torch.float64)
        >>> x = fi.linear_solve(matvec, b, diag, solve=fi.CG())
        >>> x.sum().backward()
        >>> diag.grad  # d/d(diag) of b / diag = -b / diag**2
        tensor([-0.5000, -0.1250], dtype=torch.float64)
    """
    call = "linear_solve(matvec, b, *args)"
    solver = as_linear_solver(solve, call)
    if not callable(matvec):
        raise TypeError(f"{call}: matvec must be callable; received {type(matvec).__name__}.")
    floating_leaves(b, call, "b")
    square = init is None or _same_shapes(init, b)
    if solver.least_squares and (solver.ridge or not square):
        # Least squares or Tikhonov: x solves the normal equations (A^T A + ridge I) x = A^T b.
        like = b if init is None else init
        floating_leaves(like, call, "init")
        square_solver = solver.normal_solver()
        return _solve_attached(_NormalResidual(matvec, like), b, args, square_solver, init, call)  # type: ignore[no-any-return]
    if init is not None:
        check_same_layout(init, b, call, "init")
    return _solve_attached(_Residual(matvec), b, args, solver, init, call)  # type: ignore[no-any-return]


class _Residual:
    """``T(x, b, *args) = A(args) x - b``: with the solver's ridge, ``(A + ridge I) x = b``
    at the root. ``T`` is evaluated as ordinary code, so whatever ``matvec`` reads (module
    parameters, closures) gets its derivative."""

    def __init__(self, matvec: Callable[..., Any]) -> None:
        self.matvec = matvec

    def operator(self, args: tuple[Any, ...]) -> Callable[[Any], Any]:
        return lambda v: self.matvec(v, *args)

    def rhs(self, b: Any, args: tuple[Any, ...]) -> Any:
        return b

    def __call__(self, x: Any, b: Any, *args: Any) -> Any:
        return _tree.sub(self.matvec(x, *args), b)


class _NormalResidual(_Residual):
    """``T(x, b, *args) = A^T A x - A^T b``, the normal equations (``A^T`` by a VJP)."""

    def __init__(self, matvec: Callable[..., Any], like: Any) -> None:
        super().__init__(_normal_matvec(matvec))
        self.plain = matvec
        self.like = like

    def rhs(self, b: Any, args: tuple[Any, ...], like: Any = None) -> Any:
        # A^T b, the VJP of the linear map z -> A z (at 0, shaped like the solution).
        point = _tree.zeros_like(self.like if like is None else like)
        _, pullback = _func.vjp(lambda z: self.plain(z, *args), point)
        return pullback(b)[0]

    def __call__(self, x: Any, b: Any, *args: Any) -> Any:
        return _tree.sub(self.matvec(x, *args), self.rhs(b, args, like=x))


def _same_shapes(a: Any, b: Any) -> bool:
    leaves_a, spec_a = _tree.flatten(a)
    leaves_b, spec_b = _tree.flatten(b)
    return spec_a == spec_b and all(
        getattr(x, "shape", None) == getattr(y, "shape", None)
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def _solve_attached(
    residual: _Residual,
    b: TensorTree,
    args: tuple[Any, ...],
    solver: LinearSolverBase,
    init: TensorTree | None,
    label: str,
) -> Any:
    """Solve without derivatives, then attach them by the implicit rule of ``T = A x - b``."""
    from .root import attach

    plain_b, plain_args = _tree.detached((b, args))
    with torch.no_grad():
        rhs = residual.rhs(plain_b, plain_args)
    # One factorization (dense solvers) for this call: the derivative solves of the rule
    # below solve with J = A or J^T by the factors of this forward solve (J, not adjoint).
    solver = reusing(solver)
    solution = _run_detached(
        solver, lambda _, a: residual.operator(a), rhs, plain_args, init, label, adjoint=False
    )
    return attach(
        residual, solution, (b, *args), range(len(args) + 1), solver, label, check_root=False
    )

"""Entry points for the inner solvers: ``solve_fixed_point``, ``solve_root``, ``minimize``,
``least_squares``.

Each runs a method (``Anderson``, ``Newton``, ...) on detached inputs and, by default,
attaches implicit derivatives to the solution with the same rule as ``implicit_root``: the
iterations are never differentiated, and memory does not grow with their number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from .._core import tree as _tree
from .._core.checks import check_same_layout, floating_leaves
from .._core.result import report
from .._core.tree import TreeT
from .._linear.adapter import as_linear_solver
from .._linear.auto import Auto
from .._linear.base import LinearSolveArg
from .._linear.cg import CG
from .._rules.decorators import _FixedPointResidual
from .._rules.root import attach
from .base import InnerProblem, InnerSolver, Solution
from .fixed_point import Anderson
from .least_squares import CheckedResidual, LevenbergMarquardt, SumOfSquares
from .newton import Newton

__all__ = ["least_squares", "minimize", "solve_fixed_point", "solve_root"]


class _RootAsFixedPoint:
    """``F(x, *args) = x - T(x, *args)``: lets fixed-point methods solve ``T = 0``."""

    def __init__(self, root_fn: Callable[..., Any]) -> None:
        self.root_fn = root_fn

    def __call__(self, x: Any, *args: Any) -> Any:
        return _tree.sub(x, self.root_fn(x, *args))


class _Stationarity:
    """``T(x, *args) = grad_x L(x, *args)``: zero at a minimum of ``L``."""

    def __init__(self, objective: Callable[..., torch.Tensor]) -> None:
        self.objective = objective

    def __call__(self, x: Any, *args: Any) -> Any:
        return torch.func.grad(self.objective)(x, *args)


class _CheckedOnce:
    """The user's function, its first output checked: shaped like ``x``, or a scalar loss."""

    def __init__(self, fn: Callable[..., Any], call: str, what: str, scalar: bool) -> None:
        self.fn, self.call, self.what, self.scalar = fn, call, what, scalar
        self.checked = False

    def __call__(self, x: Any, *args: Any) -> Any:
        out = self.fn(x, *args)
        if not self.checked:
            if not self.scalar:
                check_same_layout(out, x, self.call, f"{self.what}(x, *args)", "init")
            elif not (isinstance(out, torch.Tensor) and out.dim() == 0):
                got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out)
                raise ValueError(
                    f"{self.call}: expected {self.what}(x, *args) to return a scalar (0-d) "
                    f"tensor; received {got}. Reduce it, e.g. with .sum() or .mean()."
                )
            self.checked = True
        return out


_ENTRY_POINTS = {
    "fixed_point": "fi.solve_fixed_point",
    "root": "fi.solve_root",
    "minimize": "fi.minimize",
    "least_squares": "fi.least_squares",
}


def _run(
    call: str,
    kind: str,
    fn: Callable[..., Any],
    init: TreeT,
    args: tuple[Any, ...],
    method: InnerSolver,
    solve: LinearSolveArg,
    implicit: bool,
) -> Solution[TreeT]:
    """Run ``method`` on the problem ``fn`` defines (``kind``: fixed_point, root, minimize)."""
    if isinstance(method, type) or not isinstance(method, InnerSolver):  # the protocol
        raise TypeError(
            f"{call}: method must be an inner solver such as fi.Anderson() or fi.Newton() "
            f"(an object following fi.InnerSolver); received {type(method).__name__}."
        )
    solve = as_linear_solver(solve, call)
    kinds = getattr(method, "problem_kinds", tuple(_ENTRY_POINTS))
    if kind not in kinds:
        entries = ", ".join(_ENTRY_POINTS[k] for k in kinds)
        raise TypeError(
            f"{call}: method {type(method).__name__} does not solve this kind of problem; it "
            f"works with {entries}. Choose another method, e.g. the default (method=None)."
        )
    leaves, _ = floating_leaves(init, call, "init")
    rtol, atol = method.tolerances(leaves[0].dtype)
    # A fresh start: the result may be the start itself when no iteration is needed.
    start = _tree.map_leaves(torch.clone, init)
    inner_init, inner_args = (
        (_tree.detached(start), _tree.detached(args)) if implicit else (start, args)
    )

    names = {"fixed_point": "fixed_point_fn", "root": "root_fn", "minimize": "objective"}
    checked = _CheckedOnce(fn, call, names.get(kind, ""), scalar=kind == "minimize")
    residual_fn: Callable[..., Any] | None = None
    objective: Callable[..., Any] | None = None
    fixed_point_fn: Callable[..., Any]
    root_fn: Callable[..., Any]
    rule: Callable[..., Any]  # T(x, *args) for the implicit rule: the user's own function
    if kind == "fixed_point":
        fixed_point_fn, root_fn, rule = (
            checked,
            _FixedPointResidual(checked),
            _FixedPointResidual(fn),
        )
    elif kind == "root":
        root_fn, fixed_point_fn, rule = checked, _RootAsFixedPoint(checked), fn
    elif kind == "least_squares":
        # 0.5 ||r||^2: stationarity J^T r = 0, whose Jacobian (the rule's A) is the full
        # Hessian J^T J + sum_i r_i Hess r_i, exact for non-zero residual problems too.
        residual_fn = CheckedResidual(fn, call)
        objective = SumOfSquares(residual_fn)
        root_fn, rule = _Stationarity(objective), _Stationarity(SumOfSquares(fn))
        fixed_point_fn = _RootAsFixedPoint(root_fn)
    else:
        objective, root_fn, rule = checked, _Stationarity(checked), _Stationarity(fn)
        fixed_point_fn = _RootAsFixedPoint(root_fn)
    if kind in ("minimize", "least_squares"):
        # A constrained method states its own condition (e.g. a projected fixed point).
        optimality = getattr(method, "optimality", lambda _: None)
        constrained = optimality(SumOfSquares(fn) if kind == "least_squares" else fn)
        if constrained is not None:
            rule = constrained

    def bound(args: tuple[Any, ...]) -> InnerProblem:
        # The problem's functions bound to args; bind rebinds them (to a vmap batch's rows).
        return InnerProblem(
            root=lambda x: root_fn(x, *args),
            fixed_point=lambda x: fixed_point_fn(x, *args),
            objective=None if objective is None else (lambda x: objective(x, *args)),
            rtol=rtol,
            atol=atol,
            residual=None if residual_fn is None else (lambda x: residual_fn(x, *args)),
            args=args,
        ).rebindable(bound)

    problem = bound(inner_args)
    if implicit:
        # The iterations are never differentiated: nothing they read (module parameters or
        # closures that require grad) may record a graph, which would hold memory growing with
        # the iterations. torch.func transforms inside the methods ignore this outer no_grad.
        with torch.no_grad():
            result = method.run(problem, inner_init)
    else:
        result = method.run(problem, inner_init)
    report(
        result,
        method.on_failure,
        f"{call} with {type(method).__name__}",
        method.failure_hint,
        stacklevel=4,
    )
    if not implicit:
        return result
    # The method judged convergence by its own tolerances and reported it above.
    value = attach(rule, result.value, args, range(len(args)), solve, call, check_root=False)
    return replace(result, value=value)


def _default_solve(method: Any, objective: Callable[..., Any]) -> LinearSolveArg:
    """The SPD choice (Cholesky / CG) for the Hessian of an unconstrained minimum; the general
    one (LU / GMRES) for a constrained method's condition, whose Jacobian is not symmetric."""
    optimality = getattr(method, "optimality", None)
    if optimality is not None and optimality(objective) is not None:
        return Auto()
    return Auto(symmetric=True)


def solve_fixed_point(
    fixed_point_fn: Callable[..., TreeT],
    init: TreeT,
    *args: Any,
    method: InnerSolver | None = None,
    solve: LinearSolveArg = None,
    implicit: bool = True,
) -> Solution[TreeT]:
    """Find ``x = F(x, *args)`` and differentiate it implicitly in ``args``.

    Args:
        fixed_point_fn: ``F(x, *args)``, returning a pytree shaped like ``x``. Tensors it
            needs come in through ``args`` (a captured tensor requiring grad is refused).
        init: the starting point (a warm start from a previous solution works well).
        *args: pytrees passed to ``F``; their tensor leaves get implicit derivatives.
        method: ``Anderson()`` (default), ``FixedPointIteration()``, ``Broyden()`` or
            ``Newton()`` (the last two solve ``x - F(x) = 0``).
        solve: the linear solver of the implicit derivative, for ``A = I - dF/dx``
            (default ``Auto()``: dense LU up to 500 unknowns, GMRES beyond; ``Neumann()``
            suits contractions).
        implicit: attach implicit derivatives (default). ``False`` returns the raw
            iterate, so autograd differentiates through the iterations instead (unrolled).

    Returns:
        A :class:`Solution`: ``value`` plus per-element ``iterations``, ``residual_norm``
        (``||F(x) - x||``), ``converged`` and ``status``; batched under ``vmap``, where each
        element stops when it converges and the batch when all have.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def F(x, theta):
        ...     return torch.cos(x) + theta
        >>> theta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        >>> sol = fi.solve_fixed_point(F, torch.zeros((), dtype=torch.float64), theta)
        >>> sol.value.backward()  # dx*/dtheta = 1 / (1 + sin(x*))
        >>> torch.allclose(theta.grad, 1 / (1 + torch.sin(sol.value.detach())))
        True
    """
    return _run(
        "solve_fixed_point(fixed_point_fn, init, *args)",
        "fixed_point",
        fixed_point_fn,
        init,
        args,
        Anderson() if method is None else method,
        Auto() if solve is None else solve,
        implicit,
    )


def solve_root(
    root_fn: Callable[..., TreeT],
    init: TreeT,
    *args: Any,
    method: InnerSolver | None = None,
    solve: LinearSolveArg = None,
    implicit: bool = True,
) -> Solution[TreeT]:
    """Find ``T(x, *args) = 0`` and differentiate ``x`` implicitly in ``args``.

    Args:
        root_fn: ``T(x, *args)``, returning a pytree shaped like ``x``.
        init: the starting point.
        *args: pytrees passed to ``T``; their tensor leaves get implicit derivatives.
        method: ``Newton()`` (default), ``Broyden()``, or a fixed-point method applied to
            ``x - T(x)``.
        solve: the linear solver of the implicit derivative, for ``A = dT/dx``
            (default ``Auto()``: dense LU up to 500 unknowns, GMRES beyond).
        implicit: see :func:`solve_fixed_point`.

    Returns:
        A :class:`Solution` (``residual_norm`` is ``||T(x)||``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):
        ...     return x ** 3 - a
        >>> a = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
        >>> sol = fi.solve_root(T, torch.tensor(1.0, dtype=torch.float64), a)
        >>> sol.value.backward()  # dx/da = 1 / (3 x^2) = 1/12
        >>> round(float(a.grad), 6)
        0.083333
    """
    return _run(
        "solve_root(root_fn, init, *args)",
        "root",
        root_fn,
        init,
        args,
        Newton() if method is None else method,
        Auto() if solve is None else solve,
        implicit,
    )


def minimize(
    objective: Callable[..., torch.Tensor],
    init: TreeT,
    *args: Any,
    method: InnerSolver | None = None,
    solve: LinearSolveArg = None,
    implicit: bool = True,
) -> Solution[TreeT]:
    """Minimize ``L(x, *args)`` over ``x`` and differentiate the minimizer in ``args``.

    Solves the stationarity condition ``grad_x L = 0``; the implicit derivative uses the
    Hessian, symmetric positive definite at a strict minimum, so ``solve`` defaults to CG.

    Args:
        objective: ``L(x, *args)``, a scalar tensor, twice differentiable in ``x``.
        init: the starting point.
        *args: pytrees passed to ``L``; their tensor leaves get implicit derivatives.
        method: ``Newton(solve=CG())`` (default, Newton-CG with backtracking on ``L``),
            ``LBFGS()``, ``GradientDescent(step_size=...)``, or, for a constraint
            ``x in C``, ``ProjectedGradient(projection=..., step_size=...)``.
        solve: the linear solver of the implicit derivative (default
            ``Auto(symmetric=True)``: dense Cholesky up to 500 unknowns, CG beyond;
            ``Auto()`` for ``ProjectedGradient``, whose condition has a non-symmetric Jacobian).
        implicit: see :func:`solve_fixed_point`.

    Returns:
        A :class:`Solution` (``residual_norm`` is the gradient norm).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def L(w, lam, X, y):  # ridge regression
        ...     return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * lam * (w ** 2).sum()
        >>> X, y = torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        >>> lam = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        >>> w = fi.minimize(L, torch.zeros(2, dtype=torch.float64), lam, X, y).value
        >>> w.sum().backward()  # w = y / (1 + lam): dw/dlam summed = -2 / 4
        >>> lam.grad
        tensor(-0.5000, dtype=torch.float64)
    """
    chosen = Newton(solve=CG(on_failure="ignore")) if method is None else method
    return _run(
        "minimize(objective, init, *args)",
        "minimize",
        objective,
        init,
        args,
        chosen,
        _default_solve(chosen, objective) if solve is None else solve,
        implicit,
    )


def least_squares(
    residual_fn: Callable[..., Any],
    init: TreeT,
    *args: Any,
    method: InnerSolver | None = None,
    solve: LinearSolveArg = None,
    implicit: bool = True,
) -> Solution[TreeT]:
    """Minimize ``0.5 ||r(x, *args)||^2`` over ``x`` and differentiate the minimizer in ``args``.

    The implicit derivative differentiates the stationarity condition ``J^T r = 0``
    (``J = dr/dx``) exactly: its Jacobian is the full Hessian
    ``J^T J + sum_i r_i d^2 r_i / dx^2``, not the Gauss-Newton matrix ``J^T J`` the methods
    step with, so the derivative is exact for problems whose residual does not vanish at the
    solution as well.

    Args:
        residual_fn: ``r(x, *args)``, a pytree of floating tensors of any shapes (the
            residuals need not be shaped like ``x``).
        init: the starting point.
        *args: pytrees passed to ``r``; their tensor leaves get implicit derivatives.
        method: ``LevenbergMarquardt()`` (default), ``GaussNewton()``, or any method of
            :func:`minimize` (``LBFGS()``, ``Newton()``, ``ProjectedGradient(...)``) applied
            to ``0.5 ||r||^2``.
        solve: the linear solver of the implicit derivative (default
            ``Auto(symmetric=True)``: dense Cholesky up to 500 unknowns, CG beyond;
            ``Auto()`` for a constrained method).
        implicit: see :func:`solve_fixed_point`.

    Returns:
        A :class:`Solution` (``residual_norm`` is the gradient norm ``||J^T r||``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def r(p, t, y):  # fit y = a exp(b t)
        ...     return p[0] * torch.exp(p[1] * t) - y
        >>> t = torch.linspace(0, 1, 5, dtype=torch.float64)
        >>> y = (2.0 * torch.exp(-1.5 * t)).requires_grad_()
        >>> sol = fi.least_squares(r, torch.tensor([1.0, 0.0], dtype=torch.float64), t, y)
        >>> sol.value.detach().round(decimals=6)
        tensor([ 2.0000, -1.5000], dtype=torch.float64)
        >>> sol.value[0].backward()  # how the fitted amplitude moves with the data
        >>> y.grad.shape
        torch.Size([5])
    """
    chosen = LevenbergMarquardt() if method is None else method
    return _run(
        "least_squares(residual_fn, init, *args)",
        "least_squares",
        residual_fn,
        init,
        args,
        chosen,
        _default_solve(chosen, SumOfSquares(residual_fn)) if solve is None else solve,
        implicit,
    )

"""Nonlinear least squares ``min 0.5 ||r(x)||^2``: Gauss-Newton and Levenberg-Marquardt.

Both step with the Gauss-Newton matrix ``J^T J`` (``J = dr/dx``), applied matrix-free as a
JVP followed by a VJP of ``r`` and inverted by any linear solver (CG by default). The
implicit derivative is not theirs to give: :func:`least_squares` differentiates the exact
stationarity ``J^T r = 0``, whose Jacobian adds the second-order residual terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch

from .._core import func as _func
from .._core import tree as _tree
from .._core.checks import floating_leaves
from .._core.loop import safe_div
from .._linear.adapter import as_linear_solver
from .._linear.base import LinearSolver
from .._linear.cg import CG
from .base import InnerMethod, InnerProblem
from .lbfgs import armijo

__all__ = ["CheckedResidual", "GaussNewton", "LevenbergMarquardt", "Linearization", "SumOfSquares"]


class SumOfSquares:
    """``L(x, *args) = 0.5 ||r(x, *args)||^2`` over all leaves of the residual jointly."""

    def __init__(self, residual_fn: Callable[..., Any]) -> None:
        self.residual_fn = residual_fn

    def __call__(self, x: Any, *args: Any) -> torch.Tensor:
        r = self.residual_fn(x, *args)
        return 0.5 * _tree.vdot(r, r)


class CheckedResidual:
    """The user's residual function, its first output checked: floating tensors, the
    dtype and device of ``x``."""

    def __init__(self, fn: Callable[..., Any], call: str) -> None:
        self.fn, self.call = fn, call
        self.checked = False

    def __call__(self, x: Any, *args: Any) -> Any:
        out = self.fn(x, *args)
        if not self.checked:
            leaves, _ = floating_leaves(out, self.call, "residual_fn(x, *args)")
            first = _tree.flatten(x)[0][0]
            if leaves[0].dtype != first.dtype or leaves[0].device != first.device:
                raise TypeError(
                    f"{self.call}: expected residual_fn(x, *args) to return tensors of the "
                    f"dtype and device of init ({first.dtype} on {first.device}); received "
                    f"{leaves[0].dtype} on {leaves[0].device}. Cast inside residual_fn."
                )
            self.checked = True
        return out


class Linearization(NamedTuple):
    """The residual ``r`` linearized at ``x``: ``v -> J v``, ``u -> J^T u``, ``L(x) =
    0.5 ||r||^2``, the gradient ``g = J^T r`` and its norm."""

    j: Callable[[Any], Any]
    jt: Callable[[Any], Any]
    f: torch.Tensor
    g: Any
    g_norm: torch.Tensor


def linearize(problem: InnerProblem, owner: str, x: Any) -> Linearization:
    """``r`` at ``x`` with its products (the JVP as the VJP's transpose) and ``J^T r``."""
    value, vjp_fn = _func.vjp(_residual_of(problem, owner), x)

    def jt(u: Any) -> Any:
        return vjp_fn(u)[0]

    _, transpose = _func.vjp(jt, _tree.zeros_like(value))
    g = jt(value)
    return Linearization(
        lambda v: transpose(v)[0], jt, 0.5 * _tree.vdot(value, value), g, _tree.norm(g)
    )


def _residual_of(problem: InnerProblem, owner: str) -> Callable[[Any], Any]:
    if problem.residual is None:  # guarded by the entry points; for methods run directly
        raise TypeError(
            f"{owner}.run: the problem has no residual function; use it with fi.least_squares."
        )
    return problem.residual


#: Levenberg-Marquardt's state: the linearization at x, mu and nu.
_MarquardtState = tuple[Linearization, torch.Tensor, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class _NormalStepMethod(InnerMethod):
    # Typed as the protocol (what reading ``.solve`` gives); a plain callable
    # ``solve(matvec, b) -> x`` is accepted too and wrapped at construction.
    solve: LinearSolver = field(default_factory=lambda: CG(on_failure="ignore"))
    maxiter: int = 100

    problem_kinds: ClassVar[tuple[str, ...]] = ("least_squares",)

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        object.__setattr__(self, "solve", as_linear_solver(self.solve, f"{owner}(solve=...)"))

    @property
    def failure_hint(self) -> str:
        return (
            "Raise maxiter, loosen rtol/atol, start closer to the solution, or try "
            "LevenbergMarquardt() (robust far from the solution) or LBFGS()."
        )


@dataclass(frozen=True, kw_only=True)
class GaussNewton(_NormalStepMethod):
    """Gauss-Newton for :func:`least_squares`: solve ``J^T J s = -J^T r``, step ``x + t s``.

    ``J^T J`` is applied matrix-free (one JVP and one VJP of ``r`` per product) and inverted
    by ``solve`` (default CG, the system being symmetric positive semidefinite). With
    ``backtracking``, ``t`` is the largest of ``1, 1/2, ...`` meeting the Armijo condition
    on ``0.5 ||r||^2`` (an element finding none does not move); without it, ``t = 1``.
    Converges quadratically on zero-residual problems, linearly otherwise, and needs
    ``J`` of full column rank near the solution (else use ``LevenbergMarquardt``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def r(x, a):  # x^2 = a, as least squares
        ...     return x ** 2 - a
        >>> a = torch.tensor([4.0, 9.0], dtype=torch.float64)
        >>> fi.least_squares(r, torch.ones(2, dtype=torch.float64), a,
        ...                  method=fi.GaussNewton()).value
        tensor([2., 3.], dtype=torch.float64)
    """

    backtracking: bool = True
    max_backtracks: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        mb = self.max_backtracks
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
            raise ValueError(f"GaussNewton: max_backtracks must be a positive int; got {mb!r}.")

    # State: the linearization at x (see _NormalStepMethod.init) and L(x) = 0.5 ||r(x)||^2.
    def init(self, problem: InnerProblem, x: Any) -> Linearization:
        return linearize(problem, "GaussNewton", x)

    # J^T J s = -J^T r, then x <- x + t s with t from the Armijo line search on L.
    def step(
        self, problem: InnerProblem, x: Any, state: Linearization, iteration: int
    ) -> tuple[Any, Linearization]:
        at, finished = state, self.terminate(problem, x, state)
        solver = as_linear_solver(self.solve, "GaussNewton")
        s = solver.run(lambda v: at.jt(at.j(v)), _tree.scale(-1.0, at.g)).solution
        if self.backtracking:
            slope = _tree.vdot(at.g, s)
            merit = SumOfSquares(_residual_of(problem, "GaussNewton"))
            x, _, _ = armijo(
                merit, x, s, at.f, slope, self.max_backtracks, finished, self.check_every
            )
        else:
            x = _tree.add(x, s)
        # Linearize once at the new iterate: its J^T r tests convergence, and its
        # products serve the next step. (For an element frozen by the loop the products
        # are wrong but unused: its new state is discarded.)
        return x, linearize(problem, "GaussNewton", x)

    def residual_norm(self, problem: InnerProblem, x: Any, state: Linearization) -> torch.Tensor:
        return state.g_norm


@dataclass(frozen=True, kw_only=True)
class LevenbergMarquardt(_NormalStepMethod):
    """Levenberg-Marquardt for :func:`least_squares`: solve ``(J^T J + mu I) s = -J^T r``.

    A step is accepted when the gain ratio ``rho = (L(x) - L(x + s)) / (L(x) - m(s))``
    (actual over predicted decrease of ``L = 0.5 ||r||^2``, with ``m`` the Gauss-Newton
    model) is positive (or, near the solution, where the predicted decrease is below the
    rounding of ``L``, when ``L`` does not rise beyond that rounding); then
    ``mu <- mu max(1/3, 1 - (2 rho - 1)^3)`` and ``nu <- 2``, otherwise ``x`` stays,
    ``mu <- mu nu`` and ``nu <- 2 nu`` (Nielsen's rule). So ``L`` never increases, large
    ``mu`` gives short gradient steps far from the solution and small ``mu`` Gauss-Newton
    steps near it. ``mu`` and ``nu`` are per element under
    ``vmap``. A rejected step counts as an iteration.

    Attributes:
        damping: the initial ``mu`` (absolute: scale it with ``J^T J``'s diagonal).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def rosenbrock(x):  # the minimum of the Rosenbrock function, as least squares
        ...     return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
        >>> sol = fi.least_squares(rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64),
        ...                        method=fi.LevenbergMarquardt())
        >>> sol.value.round(decimals=8), bool(sol.converged)
        (tensor([1., 1.], dtype=torch.float64), True)
    """

    damping: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.damping, bool)
            or not isinstance(self.damping, int | float)
            or not self.damping > 0
        ):
            raise ValueError(
                f"LevenbergMarquardt: damping must be a number > 0; received {self.damping!r}."
            )

    # State: the linearization at x, and the damping mu with its growth factor nu.
    def init(self, problem: InnerProblem, x: Any) -> _MarquardtState:
        at = linearize(problem, "LevenbergMarquardt", x)
        mu = torch.full_like(at.f, float(self.damping))
        return at, mu, torch.full_like(at.f, 2.0)

    def step(
        self, problem: InnerProblem, x: Any, state: _MarquardtState, iteration: int
    ) -> tuple[Any, _MarquardtState]:
        at, mu, nu = state
        finished = self.terminate(problem, x, state)
        solver = as_linear_solver(self.solve, "LevenbergMarquardt")
        f, g = at.f, at.g

        def damped(v: Any) -> Any:  # (J^T J + mu I) v
            return _tree.axpy(mu, v, at.jt(at.j(v)))

        s = solver.run(damped, _tree.scale(-1.0, g)).solution
        trial = _tree.add(x, s)
        r_trial = _residual_of(problem, "LevenbergMarquardt")(trial)
        f_trial = 0.5 * _tree.vdot(r_trial, r_trial)
        # L(x) - m(s) = -g.s - 0.5 s.J^TJ s = 0.5 (mu s.s - g.s) when the solve is exact
        predicted = 0.5 * (mu * _tree.vdot(s, s) - _tree.vdot(g, s))
        ratio = safe_div(f - f_trial, predicted)
        # Near the solution the predicted decrease falls below the rounding of L and the
        # ratio is noise: a step that does not raise L beyond that rounding is accepted.
        noise = 4 * torch.finfo(f.dtype).eps * torch.abs(f)
        unresolved = (predicted <= noise) & (f_trial <= f + noise)
        accept = ~finished & torch.isfinite(f_trial) & (predicted > 0) & ((ratio > 0) | unresolved)
        factor = torch.clamp(1 - (2 * ratio - 1) ** 3, min=1 / 3)
        mu = torch.where(accept, mu * factor, mu * nu)
        nu = torch.where(accept, torch.full_like(nu, 2.0), 2 * nu)
        x = _tree.where(accept, trial, x)
        return x, (linearize(problem, "LevenbergMarquardt", x), mu, nu)

    def residual_norm(self, problem: InnerProblem, x: Any, state: _MarquardtState) -> torch.Tensor:
        return state[0].g_norm

    def terminate(self, problem: InnerProblem, x: Any, state: _MarquardtState) -> torch.Tensor:
        # mu overflowing means no step decreases L any more: stop (not converged).
        at, mu, _ = state
        return problem.finished(at.g_norm, x) | ~torch.isfinite(mu)

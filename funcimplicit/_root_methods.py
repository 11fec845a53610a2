"""Root-finding and minimization methods: Broyden, Newton, gradient descent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from . import _func, _tree
from ._gmres import GMRES
from ._inner import InnerMethod, InnerProblem, Solution, classify
from ._loop import ALL_DONE, iterate, progress, safe_div
from ._protocols import LinearSolver
from ._solver_base import as_linear_solver
from ._tree import TreeT

__all__ = ["Broyden", "GradientDescent", "Newton"]


@dataclass(frozen=True, kw_only=True)
class Broyden(InnerMethod):
    """Limited-memory ("good") Broyden method for ``T(x) = 0``.

    Approximates the inverse Jacobian as ``H = scale * I + sum_i u_i v_i^T`` (at most
    ``memory`` terms; when full, it restarts from ``scale * I``) and steps
    ``x <- x - H T(x)``. After a step ``dx`` with ``df = T(x + dx) - T(x)``:
    ``H <- H + (dx - H df)(dx^T H) / (dx^T H df)``.
    An update with a vanishing denominator is skipped. ``scale = 1`` suits fixed points
    (``T = x - F(x)`` has Jacobian ``I - dF/dx``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def F(z, w):
        ...     return torch.tanh(0.5 * z + w)
        >>> w = torch.tensor([0.1, -0.2], dtype=torch.float64)
        >>> sol = fi.solve_fixed_point(F, torch.zeros(2, dtype=torch.float64), w,
        ...                            method=fi.Broyden())
        >>> torch.allclose(sol.value, F(sol.value, w)), bool(sol.converged)
        (True, True)
    """

    memory: int = 20
    scale: float = 1.0

    form: ClassVar[str] = "root"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"Broyden: memory must be a positive int; received {self.memory!r}.")
        if not isinstance(self.scale, int | float) or self.scale == 0:
            raise ValueError(f"Broyden: scale must be a nonzero number; received {self.scale!r}.")

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        x0, unravel = _tree.ravel(init)

        def root(v: torch.Tensor) -> torch.Tensor:
            return _tree.ravel(problem.root(unravel(v)))[0]

        m = self.memory
        t0 = root(x0)
        r_norm = torch.linalg.vector_norm(t0)
        us = torch.zeros(m, x0.shape[0], dtype=x0.dtype, device=x0.device) * r_norm
        vs = us
        eye = torch.eye(m, dtype=x0.dtype, device=x0.device)
        counter = [0]

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, t, us, vs, _ = state
            k = counter[0]
            counter[0] += 1

            def h(v: torch.Tensor) -> torch.Tensor:  # H v
                out: torch.Tensor = self.scale * v + (vs @ v) @ us
                return out

            def h_t(v: torch.Tensor) -> torch.Tensor:  # H^T v
                out: torch.Tensor = self.scale * v + (us @ v) @ vs
                return out

            dx = -h(t)
            x = x + dx
            t_next = root(x)
            h_df = h(t_next - t)
            denom = torch.dot(dx, h_df)
            usable = torch.abs(denom) > torch.finfo(x.dtype).eps * torch.linalg.vector_norm(
                dx
            ) * torch.linalg.vector_norm(h_df)
            u = torch.where(usable, safe_div(torch.ones_like(denom), denom), 0.0) * (dx - h_df)
            v = h_t(dx)
            if k > 0 and k % m == 0:
                # Memory full: restart from H = scale * I. (Overwriting the oldest term
                # instead leaves terms built against an inverse that included it: diverges.)
                us, vs = us * 0, vs * 0
            slot = eye[k % m][:, None]
            us = us * (1 - slot) + slot * u[None, :]
            vs = vs * (1 - slot) + slot * v[None, :]
            r_norm = torch.linalg.vector_norm(t_next)
            return (x, t_next, us, vs, r_norm), problem.finished(r_norm, x)

        done = problem.finished(r_norm, x0)
        state, iterations, _ = iterate(step, (x0, t0, us, vs, r_norm), done, self.maxiter)
        x, _, _, _, r_norm = state
        return classify(unravel(x), iterations, r_norm, problem)


def _backtrack(
    problem: InnerProblem,
    x: Any,
    direction: Any,
    merit_x: torch.Tensor,
    slope: torch.Tensor,
    merit: Any,
    max_steps: int,
) -> Any:
    """Armijo backtracking: the largest ``t`` in ``1, 1/2, ...`` with
    ``merit(x + t d) <= merit(x) + 1e-4 t slope``; the last ``t`` if none qualifies."""
    t = torch.ones_like(merit_x)
    accepted = torch.zeros_like(merit_x, dtype=torch.bool)
    for _ in range(max_steps):
        trial = merit(_tree.axpy(t, direction, x))
        good = torch.isfinite(trial) & (trial <= merit_x + 1e-4 * t * slope)
        accepted = accepted | good
        if progress(accepted) == ALL_DONE:
            break
        t = torch.where(accepted, t, 0.5 * t)
    return _tree.axpy(t, direction, x)


@dataclass(frozen=True, kw_only=True)
class Newton(InnerMethod):
    """Newton's method for ``T(x) = 0``: solve ``J s = -T(x)`` with any linear solver.

    ``J`` is applied as a JVP of ``T`` (never formed unless ``solve`` is dense). With
    ``backtracking``, the step is shortened (halved up to ``max_backtracks`` times) until
    the merit ``||T||^2 / 2`` (the objective, when minimizing) decreases enough. For a
    minimization ``J`` is the Hessian: ``solve=fi.CG()`` gives Newton-CG.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def T(x, a):
        ...     return x ** 3 - a
        >>> a = torch.tensor([8.0, 27.0], dtype=torch.float64)
        >>> fi.solve_root(T, torch.ones(2, dtype=torch.float64), a, method=fi.Newton()).value
        tensor([2., 3.], dtype=torch.float64)
    """

    # Typed as the protocol (what reading ``.solve`` gives); a plain callable
    # ``solve(matvec, b) -> x`` is accepted too and wrapped at construction.
    solve: LinearSolver = field(default_factory=lambda: GMRES(on_failure="ignore"))
    backtracking: bool = True
    max_backtracks: int = 20
    maxiter: int = 50

    form: ClassVar[str] = "root"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "solve", as_linear_solver(self.solve, "Newton(solve=...)"))
        if not isinstance(self.max_backtracks, int) or self.max_backtracks < 1:
            raise ValueError(f"Newton: max_backtracks must be >= 1; got {self.max_backtracks!r}.")

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        minimizing = problem.objective is not None

        def merit(x: Any) -> torch.Tensor:
            if problem.objective is not None:
                value: torch.Tensor = problem.objective(x)
                return value
            t = problem.root(x)
            return 0.5 * _tree.vdot(t, t)

        t0 = problem.root(init)
        r_norm = _tree.norm(t0)

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, t, _ = state

            # J s = -T(x), J v = d/de T(x + e v); a Hessian (minimizing) is its own transpose
            if minimizing:
                _, pullback = _func.vjp(problem.root, x)
                jacobian = lambda v: pullback(v)[0]  # noqa: E731
            else:
                jacobian = _func.linearize(problem.root, x)
            s = as_linear_solver(self.solve, "Newton").run(jacobian, _tree.scale(-1.0, t)).solution
            if self.backtracking:
                # slope of the merit along s: grad(L) . s, or -||T||^2 for the exact step
                slope = _tree.vdot(t, s) if minimizing else -_tree.vdot(t, t)
                x = _backtrack(problem, x, s, merit(x), slope, merit, self.max_backtracks)
            else:
                x = _tree.add(x, s)
            t = problem.root(x)
            r_norm = _tree.norm(t)
            return (x, t, r_norm), problem.finished(r_norm, x)

        done = problem.finished(r_norm, init)
        state, iterations, _ = iterate(step, (init, t0, r_norm), done, self.maxiter)
        x, _, r_norm = state
        return classify(x, iterations, r_norm, problem)


@dataclass(frozen=True, kw_only=True)
class GradientDescent(InnerMethod):
    """Gradient descent ``x <- x - step_size * grad L(x)`` for :func:`minimize`.

    With ``backtracking``, each step starts at ``step_size`` and is halved until the
    Armijo condition holds. Also usable on a root problem (``x <- x - step_size T(x)``).

    Examples:
        >>> import torch, funcimplicit as fi
        >>> def L(x, a):
        ...     return ((x - a) ** 2).sum()
        >>> a = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> sol = fi.minimize(L, torch.zeros(2, dtype=torch.float64), a,
        ...                   method=fi.GradientDescent(step_size=0.25))
        >>> sol.value.round(decimals=8), bool(sol.converged)
        (tensor([ 1., -1.], dtype=torch.float64), True)
    """

    step_size: float = 1e-2
    backtracking: bool = False
    max_backtracks: int = 20
    maxiter: int = 1000

    form: ClassVar[str] = "root"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.step_size, int | float) or not self.step_size > 0:
            raise ValueError(f"GradientDescent: step_size must be > 0; got {self.step_size!r}.")

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        t0 = problem.root(init)
        r_norm = _tree.norm(t0)
        objective = problem.objective

        def step(state: Any) -> tuple[Any, torch.Tensor]:
            x, t, _ = state
            direction = _tree.scale(-self.step_size, t)
            if self.backtracking and objective is not None:
                slope = -self.step_size * _tree.vdot(t, t)
                x = _backtrack(
                    problem, x, direction, objective(x), slope, objective, self.max_backtracks
                )
            else:
                x = _tree.add(x, direction)
            t = problem.root(x)
            r_norm = _tree.norm(t)
            return (x, t, r_norm), problem.finished(r_norm, x)

        done = problem.finished(r_norm, init)
        state, iterations, _ = iterate(step, (init, t0, r_norm), done, self.maxiter)
        x, _, r_norm = state
        return classify(x, iterations, r_norm, problem)

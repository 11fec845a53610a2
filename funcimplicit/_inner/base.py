"""Inner solvers' common ground: the result object, status codes, tolerances, and the
problem view each method works on (fixed-point map, root function or objective)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from .._core import tree as _tree
from .._core.result import ON_FAILURE_CHOICES, OnFailure, Solution, Status
from .._core.tree import TensorTree, TreeT
from .._linear.base import default_rtol

__all__ = ["InnerSolver", "InnerMethod", "InnerProblem", "Solution", "Status", "classify"]


@dataclass(frozen=True, eq=False)
class InnerProblem:
    """One problem, seen in every form a method may want, on raveled or tree iterates.

    ``root(x)`` is ``T(x)``, zero at the solution; ``fixed_point(x)`` is ``F(x)`` with
    ``F(x) = x`` at the solution (``F = x - T`` when only ``T`` is given, and conversely);
    ``objective(x)`` is set for minimization (``T`` is then its gradient). ``residual(x)``
    is set for least squares (``objective`` is then ``0.5 ||residual(x)||^2``). ``args`` are
    the arguments these functions are bound to, for a method whose own callbacks take them
    too (a projection). A method of one's own (a subclass of :class:`InnerMethod`) receives it
    in ``run(problem, init)``.
    """

    root: Callable[[Any], Any]
    fixed_point: Callable[[Any], Any]
    objective: Callable[[Any], Any] | None
    rtol: float
    atol: float
    residual: Callable[[Any], Any] | None = None
    args: tuple[Any, ...] = ()

    def tolerance(self, x: TensorTree) -> torch.Tensor:
        """``max(atol, rtol * ||x||)``."""
        return torch.clamp(self.rtol * _tree.norm(x), min=self.atol)

    def finished(self, residual_norm: torch.Tensor, x: TensorTree) -> torch.Tensor:
        """Converged, or not finite (no point iterating on NaN or Inf)."""
        tolerance = self.tolerance(x)
        # An overflowing ||x|| makes the tolerance Inf, which would accept any residual.
        return (residual_norm <= tolerance) | ~torch.isfinite(residual_norm * tolerance)


def classify(
    x: TreeT,
    iterations: torch.Tensor,
    residual_norm: torch.Tensor,
    problem: InnerProblem,
) -> Solution[TreeT]:
    """Assemble a :class:`Solution` with per-element status codes."""
    tolerance = problem.tolerance(x)
    finite = torch.isfinite(residual_norm) & torch.isfinite(tolerance)
    for leaf in _tree.flatten(x)[0]:
        finite = finite & torch.isfinite(leaf).all()
    converged = finite & (residual_norm <= tolerance)
    status = torch.where(
        converged,
        int(Status.CONVERGED),
        torch.where(finite, int(Status.MAX_ITERATIONS), int(Status.NONFINITE)),
    )
    return Solution(x, iterations, residual_norm, tolerance, converged, status)


@dataclass(frozen=True, kw_only=True)
class InnerMethod:
    """Fields shared by the inner solvers.

    Attributes:
        rtol: relative tolerance on the residual (``None``: 1e-10 in float64, 1e-5 in float32).
        atol: absolute tolerance on the residual (``None``: the same as ``rtol``'s default).
        maxiter: iteration cap, also the trip count under ``torch.compile``.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when an element does not
            converge (eager mode; the per-element ``status`` is always returned).
    """

    rtol: float | None = None
    atol: float | None = None
    maxiter: int = 100
    on_failure: OnFailure = "warn"

    #: The entry points whose problems the method can solve ("fixed_point", "root",
    #: "minimize", "least_squares"); another is refused with an error naming these.
    problem_kinds: ClassVar[tuple[str, ...]] = ("fixed_point", "root", "minimize", "least_squares")

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            ):
                raise ValueError(f"{owner}: {name} must be a number >= 0 or None; got {value!r}.")
        if isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1:
            raise ValueError(f"{owner}: maxiter must be a positive int; received {self.maxiter!r}.")
        if self.on_failure not in ON_FAILURE_CHOICES:
            raise ValueError(
                f"{owner}: on_failure must be one of {ON_FAILURE_CHOICES}; "
                f"received {self.on_failure!r}."
            )

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        default = default_rtol(dtype)
        return (
            default if self.rtol is None else self.rtol,
            default if self.atol is None else self.atol,
        )

    @property
    def failure_hint(self) -> str:
        return "Raise maxiter, loosen rtol/atol, or try another method (Anderson, Newton)."

    def optimality(self, objective: Callable[..., Any]) -> Callable[..., Any] | None:
        """The condition ``T(x, *args) = 0`` the method's solution of ``min objective`` meets,
        when it is not stationarity ``grad_x objective = 0`` (a constrained method); ``None``
        otherwise. The implicit derivative differentiates this ``T``."""
        return None

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        """Solve ``problem`` from ``init`` (no derivatives attached here)."""
        raise NotImplementedError


@runtime_checkable
class InnerSolver(Protocol):
    """Finds a fixed point, root or minimum of an inner problem, from ``init``.

    Every ``method=`` accepts an object with these members; a subclass of
    :class:`~funcimplicit.InnerMethod` has them, and may also narrow ``problem_kinds`` or
    give its own ``optimality`` condition (an object without them serves every entry point
    and is differentiated by stationarity).

    ``run`` receives the problem in every form (``problem.fixed_point``, ``problem.root``,
    ``problem.objective``, ``problem.finished``) and returns a :class:`~funcimplicit.Solution`
    shaped like ``init``; derivatives are attached by the caller, not by ``run``.
    """

    @property
    def on_failure(self) -> OnFailure:
        """``"warn"``, ``"raise"`` or ``"ignore"`` when an element does not converge."""
        ...

    @property
    def failure_hint(self) -> str:
        """Advice appended to a non-convergence message."""
        ...

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        """``(rtol, atol)`` for iterates of ``dtype``."""
        ...

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]: ...

"""Inner solvers' common ground: the result object, status codes, tolerances, and the
problem view each method works on (fixed-point map, root function or objective)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from .._core import tree as _tree
from .._core.loop import Compactable, Step, iterate
from .._core.result import ON_FAILURE_CHOICES, OnFailure, Solution, Status
from .._core.tree import TensorTree, TreeT
from .._linear.base import default_rtol

__all__ = ["InnerSolver", "InnerMethod", "InnerProblem", "Solution", "Status", "classify"]

#: A method's own state between iterations (each method names its own, e.g. a tuple).
State = Any


@dataclass(frozen=True, eq=False)
class InnerProblem:
    """One problem, seen in every form a method may want, on raveled or tree iterates.

    ``root(x)`` is ``T(x)``, zero at the solution; ``fixed_point(x)`` is ``F(x)`` with
    ``F(x) = x`` at the solution (``F = x - T`` when only ``T`` is given, and conversely);
    ``objective(x)`` is set for minimization (``T`` is then its gradient). ``residual(x)``
    is set for least squares (``objective`` is then ``0.5 ||residual(x)||^2``). ``args`` are
    the arguments these functions are bound to, for a method whose own callbacks take them
    too (a projection). A method of one's own (a subclass of :class:`InnerMethod`) receives it
    in :meth:`~InnerMethod.init`, :meth:`~InnerMethod.step` and the others. ``bind(args)``,
    where set (:meth:`rebindable`), is the same problem bound to other arguments (shaped like
    ``args``): the driver rebinds it to the active elements' rows when it compacts a ``vmap``
    batch (``funcimplicit._core.loop.COMPACT``). A problem built by hand, or a copy made with
    ``dataclasses.replace`` (whose functions ``bind`` would not rebuild), has none and is
    never compacted.
    """

    root: Callable[[Any], Any]
    fixed_point: Callable[[Any], Any]
    objective: Callable[[Any], Any] | None
    rtol: float
    atol: float
    residual: Callable[[Any], Any] | None = None
    args: tuple[Any, ...] = ()
    bind: Callable[[tuple[Any, ...]], InnerProblem] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def rebindable(self, bind: Callable[[tuple[Any, ...]], InnerProblem]) -> InnerProblem:
        """This problem, marked as ``bind(self.args)`` (set once, at construction)."""
        object.__setattr__(self, "bind", bind)
        return self

    def tolerance(self, x: TensorTree) -> torch.Tensor:
        """``max(atol, rtol * ||x||)``."""
        return torch.clamp(self.rtol * _tree.norm(x), min=self.atol)

    def finished(self, residual_norm: torch.Tensor, x: TensorTree) -> torch.Tensor:
        """Converged, or not finite (no point iterating on NaN or Inf)."""
        tolerance = self.tolerance(x)
        # Not finished while r > tol and both are finite (r, tol >= 0, so "finite" is
        # "max < inf"; max propagates NaN, which compares false): NaN or Inf stops, and so does
        # an overflowing ||x||, whose Inf tolerance would accept any residual.
        going = (residual_norm > tolerance) & (torch.maximum(residual_norm, tolerance) < math.inf)
        return torch.logical_not(going)

    def flat(self, unravel: Callable[[torch.Tensor], Any]) -> InnerProblem:
        """This problem on raveled iterates: each function takes a flat vector (``unravel``
        gives its tree) and returns a flat vector (the objective a scalar)."""

        def vector_out(fn: Callable[[Any], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda v: _tree.ravel(fn(unravel(v)))[0]

        objective, residual, bind = self.objective, self.residual, self.bind
        view = replace(
            self,
            root=vector_out(self.root),
            fixed_point=vector_out(self.fixed_point),
            objective=None if objective is None else (lambda v: objective(unravel(v))),
            residual=None if residual is None else vector_out(residual),
        )
        return view if bind is None else view.rebindable(lambda args: bind(args).flat(unravel))


def classify(
    x: TreeT,
    iterations: torch.Tensor,
    residual_norm: torch.Tensor,
    problem: InnerProblem,
    stopped: torch.Tensor | None = None,
) -> Solution[TreeT]:
    """Assemble a :class:`Solution` with per-element status codes.

    ``stopped`` flags the elements whose ``terminate`` said stop: one that stopped finite
    without meeting the tolerance could make no more progress, and is reported as
    ``STAGNATION`` rather than ``MAX_ITERATIONS``.
    """
    tolerance = problem.tolerance(x)
    finite = torch.isfinite(residual_norm) & torch.isfinite(tolerance)
    for leaf in _tree.flatten(x)[0]:
        finite = finite & torch.isfinite(leaf).all()
    converged = finite & (residual_norm <= tolerance)
    reason: torch.Tensor | int = int(Status.MAX_ITERATIONS)
    if stopped is not None:
        reason = torch.where(stopped, int(Status.STAGNATION), reason)
    status = torch.where(
        converged, int(Status.CONVERGED), torch.where(finite, reason, int(Status.NONFINITE))
    )
    return Solution(x, iterations, residual_norm, tolerance, converged, status)


@dataclass(frozen=True, kw_only=True)
class InnerMethod:
    """The base of every inner method: its fields, and the one loop that drives it.

    A method says what one iteration does, in three parts; :meth:`run` owns the loop around
    them (per-element freezing under ``vmap``, the batch-wide early stop, iteration counts,
    status codes), so every method shares it:

    - :meth:`init` ``(problem, x) -> state``: the method's state at the start ``x`` (tensors
      and, where a method needs them, Python objects such as a linearization; a tensor leaf
      is one value per problem, frozen once its problem is done);
    - :meth:`step` ``(problem, x, state, iteration) -> (x, state)``: one iteration
      (``iteration`` counts from 0, the same for every element of a batch);
    - :meth:`residual_norm` ``(problem, x, state)``: the norm the tolerance is checked
      against, and :meth:`terminate` ``(problem, x, state)``: per element, whether to stop
      (by default: the residual meets the tolerance, or is not finite).

    With ``raveled = True`` the three see ``x`` as one flat vector and ``problem`` as a view
    whose functions take and return flat vectors (a method that stores histories of
    iterates); the driver ravels the start and unravels the result.

    Attributes:
        rtol: relative tolerance on the residual (``None``: 1e-10 in float64, 1e-5 in float32).
        atol: absolute tolerance on the residual (``None``: the same as ``rtol``'s default).
        maxiter: iteration cap, also the trip count under ``torch.compile``.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` when an element does not
            converge (eager mode; the per-element ``status`` is always returned).
        check_every: read on the host whether the whole batch is done every this many
            iterations (1: every iteration, the earliest stop); ``None``: never, the loop
            runs ``maxiter`` iterations with no host synchronization (on a GPU).
    """

    rtol: float | None = None
    atol: float | None = None
    maxiter: int = 100
    on_failure: OnFailure = "warn"
    check_every: int | None = 1

    #: The entry points whose problems the method can solve ("fixed_point", "root",
    #: "minimize", "least_squares"); another is refused with an error naming these.
    problem_kinds: ClassVar[tuple[str, ...]] = ("fixed_point", "root", "minimize", "least_squares")
    #: Whether ``init``/``step`` work on the iterate raveled into one vector.
    raveled: ClassVar[bool] = False

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
        every = self.check_every
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise ValueError(
                f"{owner}: check_every must be a positive int or None (never read on the "
                f"host); received {every!r}."
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

    def init(self, problem: InnerProblem, x: Any) -> State:
        """The state at the start ``x``."""
        raise NotImplementedError(
            f"{type(self).__name__}: an inner method defines init, step and residual_norm "
            "(or overrides run); see the extension guide."
        )

    def step(
        self, problem: InnerProblem, x: Any, state: State, iteration: int
    ) -> tuple[Any, State]:
        """One iteration from ``(x, state)``: the next ``(x, state)``."""
        raise NotImplementedError(f"{type(self).__name__}: step is not defined.")

    def residual_norm(self, problem: InnerProblem, x: Any, state: State) -> torch.Tensor:
        """The norm held to the tolerance at ``(x, state)`` (0-d per problem)."""
        raise NotImplementedError(f"{type(self).__name__}: residual_norm is not defined.")

    def terminate(self, problem: InnerProblem, x: Any, state: State) -> torch.Tensor:
        """Per problem, whether to stop at ``(x, state)``: converged or not finite. A method
        that can also tell it will make no more progress adds that here (the result then
        says ``STAGNATION``)."""
        return problem.finished(self.residual_norm(problem, x, state), x)

    def run(self, problem: InnerProblem, init: TreeT) -> Solution[TreeT]:
        """Solve ``problem`` from ``init`` (no derivatives attached here): the driver loop."""
        view = problem
        start: Any = init  # the start as the method sees it: the tree, or its raveled vector
        unravel: Callable[[torch.Tensor], Any] | None = None
        if self.raveled:
            start, unravel = _tree.ravel(init)
            view = problem.flat(unravel)
        state = self.init(view, start)
        done = self.terminate(view, start, state)
        counter = [0]  # the iteration number, shared by every part of a batch

        def advance_on(on: InnerProblem) -> Step:
            def advance(carry: tuple[Any, State]) -> tuple[tuple[Any, State], torch.Tensor]:
                iteration = counter[0]
                counter[0] += 1
                x, state = self.step(on, *carry, iteration)
                return (x, state), self.terminate(on, x, state)

            return advance

        def resume(k: int) -> None:
            counter[0] = k

        # Under vmap the loop may go on with the active elements only, on the problem bound
        # to their rows of the arguments (view.bind); a problem without bind never does.
        bind = view.bind
        compactable = (
            None
            if bind is None
            else Compactable(view.args, lambda args: advance_on(bind(args)), resume)
        )
        (x, state), iterations, done = iterate(
            advance_on(view), (start, state), done, self.maxiter, self.check_every, compactable
        )
        residual_norm = self.residual_norm(view, x, state)
        value: TreeT = x if unravel is None else unravel(x)
        return classify(value, iterations, residual_norm, problem, stopped=done)


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

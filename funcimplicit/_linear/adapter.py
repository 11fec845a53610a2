"""A user's solver adapted to the library's shape: CallableSolver, as_linear_solver."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._core import tree as _tree
from .._core.checks import check_same_layout
from .._core.compat import is_transformed
from .._core.result import ON_FAILURE_CHOICES, LinearSolveResult
from .base import (
    LinearSolverBase,
    Operator,
    finish,
    rounding_slack,
)

__all__ = ["CallableSolver", "as_linear_solver"]


def _accepts_init(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called with an ``init=`` keyword (a warm start)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call it the plain way
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "init" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )


@dataclass(frozen=True, kw_only=True)
class CallableSolver(LinearSolverBase):
    """A user's linear solver, judged like the library's own: by its true residual.

    ``solve`` is either a plain callable ``solve(matvec, b) -> x`` (the TorchOpt/JAXopt
    convention; called as ``solve(matvec, b, init=x0)`` when it accepts ``init`` and a warm
    start is given) or an object following :class:`funcimplicit.LinearSolver` (its ``run``
    is used). Whatever it returns, the adapter computes ``||b - (A + ridge I) x||`` once and
    holds it to ``max(rtol * ||b||, atol)`` plus the rounding slack ``sqrt(eps) * ||b||``
    that the library allows its own Krylov methods (the user's answer is a claim, like a
    recurrence residual; a direct solve of a moderately ill-conditioned system passes, a
    wrong answer fails by far). A protocol object is held to its own reported tolerance and
    its own ``converged`` flag as well. A failure warns or raises per ``on_failure``, like
    every other solver, so a wrong user solver is never silent.

    The adapter calls ``solve`` as is. Inside a backward pass it may run under
    ``torch.func.vmap`` even when the user never calls ``vmap`` (``jacrev``, ``jacfwd`` and
    ``hessian`` vmap the backward), so ``solve`` must then be vmap-safe: no ``.item()``,
    ``if``/``while`` on tensor values, or in-place writes into captured tensors. Solvers
    built from torch operations (``torch.linalg.solve`` on a matrix from
    ``torch.func.jacfwd(matvec)``, or a library solver ``fi.CG()(matvec, b)``) are. A
    failure under a transform is re-raised with that explanation.

    Attributes:
        solve: the user's callable or protocol object.
        rtol: relative tolerance (``None``: 1e-10 in float64, 1e-5 in float32).
    """

    solve: Callable[..., Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.solve) or isinstance(self.solve, type):
            raise TypeError(
                "CallableSolver: solve must be a callable solve(matvec, b) -> x or an object "
                f"with run(matvec, b, init); received {type(self.solve).__name__}."
            )

    @property
    def _protocol(self) -> bool:
        """Whether ``solve`` follows :class:`funcimplicit.LinearSolver` (has ``run``)."""
        return callable(getattr(self.solve, "run", None))

    @property
    def _name(self) -> str:
        name = getattr(self.solve, "__qualname__", None) or type(self.solve).__name__
        return str(name)

    @property
    def failure_hint(self) -> str:
        hint = getattr(self.solve, "failure_hint", None) if self._protocol else None
        if isinstance(hint, str):
            return hint
        return (
            f"The user solver {self._name} returned x with ||b - A x|| above the tolerance: "
            "check it, or use a library solver such as fi.GMRES() or fi.LU()."
        )

    def compute(
        self, operator: Operator, b: Any, init: Any, tolerance: torch.Tensor
    ) -> LinearSolveResult[Any]:
        call = f"{self._name}(matvec, b) (a user linear solver)"
        try:
            if self._protocol:
                claim = self.solve.run(operator, b, init)  # type: ignore[attr-defined]
                x = claim.solution
            elif init is not None and _accepts_init(self.solve):
                x = self.solve(operator, b, init=init)
            else:
                x = self.solve(operator, b)
        except Exception as error:
            if not any(is_transformed(leaf) for leaf in _tree.flatten(b)[0]):
                raise
            raise RuntimeError(
                f"{call} failed under a torch.func transform ({type(error).__name__}: "
                f"{error}). Inside a backward pass the solve runs under vmap even when you "
                "never call vmap (jacrev, jacfwd and hessian vmap it), so it must be "
                "vmap-safe: no .item(), no if/while on tensor values. Write it with torch "
                "operations or use a library solver such as fi.GMRES()."
            ) from error
        check_same_layout(x, b, call, "the returned x")
        ax = operator(x)
        if self._protocol:
            # the object solved (A + its ridge) x = b: judge it on that system
            ridge = getattr(self.solve, "ridge", 0.0)
            if isinstance(ridge, int | float) and not isinstance(ridge, bool) and ridge:
                ax = _tree.axpy(float(ridge), x, ax)
        residual = _tree.norm(_tree.sub(b, ax))
        slack = rounding_slack(b)
        if not self._protocol:
            # the answer is a claim, like a recurrence residual that met the tolerance
            claimed = torch.ones_like(residual, dtype=torch.bool)
            iterations = torch.ones_like(residual, dtype=torch.int64)
            return finish(x, iterations, residual, tolerance, claimed=claimed, slack=slack)
        # held to its own reported tolerance, and its own verdict counts too
        tolerance = claim.tolerance.to(residual.dtype)
        claimed = claim.converged.to(torch.bool)
        iterations = claim.iterations.to(torch.int64)
        return finish(
            x, iterations, residual, tolerance, claimed=claimed, slack=slack, valid=claimed
        )


def as_linear_solver(solve: object, call: str) -> LinearSolverBase:
    """The linear solver that ``solve=`` names, for every entry point that takes one.

    A library solver (a :class:`LinearSolverBase`) is returned unchanged; ``None`` gives
    the default :class:`funcimplicit.Auto` (dense LU while small, GMRES beyond); a plain
    callable ``solve(matvec, b) -> x`` or an object
    following :class:`funcimplicit.LinearSolver` is wrapped in a :class:`CallableSolver`,
    which judges its answer by the true residual. Anything else is a ``TypeError`` naming
    ``call``.
    """
    if isinstance(solve, LinearSolverBase):
        return solve
    if solve is None:
        from .auto import Auto  # the default; auto imports this module

        return Auto()
    expected = (
        "a linear solver (a library solver such as fi.CG() or fi.GMRES(), an object "
        "following fi.LinearSolver, or a callable solve(matvec, b) -> x)"
    )
    if isinstance(solve, type):
        raise TypeError(
            f"{call}: solve must be {expected}; received the class {solve.__name__}. "
            f"Pass an instance, e.g. solve={solve.__name__}()."
        )
    if not callable(solve):
        raise TypeError(
            f"{call}: solve must be {expected}; received {type(solve).__name__} "
            f"({solve!r:.60}). An inner solver (method=) is not a linear solver: "
            "pass e.g. solve=fi.GMRES()."
            if callable(getattr(solve, "run", None))
            else f"{call}: solve must be {expected}; received {type(solve).__name__} "
            f"({solve!r:.60}). Pass one of those, e.g. solve=fi.GMRES()."
        )
    if callable(getattr(solve, "run", None)):  # follows fi.LinearSolver
        on_failure = getattr(solve, "on_failure", "warn")
        if on_failure not in ON_FAILURE_CHOICES:
            raise ValueError(
                f"{call}: solve.on_failure must be one of {ON_FAILURE_CHOICES}; "
                f"received {on_failure!r}."
            )
        return CallableSolver(solve=solve, on_failure=on_failure)  # type: ignore[arg-type]
    return CallableSolver(solve=solve)

"""Structural types of the two kinds of solvers, for users who write their own.

A type checker accepts any object with these members where the protocol is expected; the
library's own solvers (``fi.CG()``, ``fi.Anderson()``, ...) all satisfy them. Every ``solve=``
accepts a :class:`LinearSolver` or a plain callable ``solve(matvec, b) -> x`` (see
:data:`LinearSolveArg`); the run-time adapter judges such a solver by its true residual.
``method=`` still requires a subclass of :class:`~funcimplicit.InnerMethod`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

import torch

from ._convergence import LinearSolveResult, OnFailure
from ._inner import InnerProblem, Solution
from ._tree import TreeT

__all__ = ["InnerSolver", "LinearSolveArg", "LinearSolver"]


class LinearSolver(Protocol):
    """Solves ``(A + ridge I) x = b`` given ``matvec: v -> A v`` on pytrees shaped like ``b``.

    Calling it returns ``x`` (warning or raising per ``on_failure`` when it does not
    converge); :meth:`run` returns ``x`` with per-element statistics and never warns.
    """

    @property
    def on_failure(self) -> OnFailure:
        """``"warn"``, ``"raise"`` or ``"ignore"`` when a solve does not converge."""
        ...

    @property
    def failure_hint(self) -> str:
        """Advice appended to a non-convergence message."""
        ...

    # ``init`` is shaped like ``b`` (``TreeT | None`` on the solvers themselves). Here it is
    # ``Any``: mypy fails to match a ``TreeT | None`` parameter between two generic methods
    # when ``TreeT``'s bound is recursive, and would reject every solver (pyright does not).
    def __call__(self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None) -> TreeT: ...

    def run(
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None
    ) -> LinearSolveResult[TreeT]: ...


class InnerSolver(Protocol):
    """Finds a fixed point, root or minimum of an inner problem, from ``init``.

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


#: What every ``solve=`` accepts: a library solver or another :class:`LinearSolver`, a plain
#: callable ``solve(matvec, b) -> x`` (TorchOpt/JAXopt convention), or ``None`` (the default).
LinearSolveArg: TypeAlias = LinearSolver | Callable[[Any, Any], Any] | None

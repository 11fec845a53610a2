"""What does not satisfy ``fi.LinearSolver`` / ``fi.InnerSolver``, and what ``solve=`` refuses:
a protocol object or a plain callable ``solve(matvec, b)`` is accepted (see pass/protocols.py),
a string, a solver class or an inner solver is not."""

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch

import funcimplicit as fi

TreeT = TypeVar("TreeT", bound=fi.TensorTree)


class OnlyCall:
    """Callable like a solver, but without ``run`` and the failure settings."""

    def __call__(self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None) -> TreeT:
        return b


class TensorOnly:
    """Solves only single tensors: not the generic ``run`` the protocol promises."""

    on_failure: Literal["warn", "raise", "ignore"] = "warn"
    failure_hint = ""

    def __call__(self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None) -> TreeT:
        return b

    def run(
        self, matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, init: Any = None
    ) -> fi.LinearSolveResult[torch.Tensor]:
        raise NotImplementedError


class Duck:
    """Satisfies ``fi.LinearSolver`` completely."""

    on_failure: Literal["warn", "raise", "ignore"] = "warn"
    failure_hint = ""

    def __call__(self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None) -> TreeT:
        return b

    def run(
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None
    ) -> fi.LinearSolveResult[TreeT]:
        raise NotImplementedError


only_call: fi.LinearSolver = OnlyCall()  # type: ignore[assignment]
tensor_only: fi.LinearSolver = TensorOnly()  # type: ignore[assignment]
duck: fi.LinearSolver = Duck()
fi.linear_solve(lambda v: v, torch.ones(1), solve=duck)
fi.linear_solve(lambda v: v, torch.ones(1), solve=fi.CG)  # type: ignore[arg-type]
fi.linear_solve(lambda v: v, torch.ones(1), solve=fi.Anderson())  # type: ignore[arg-type]
method: fi.InnerSolver = fi.CG()  # type: ignore[assignment]
linear: fi.LinearSolver = fi.Anderson()  # type: ignore[assignment]

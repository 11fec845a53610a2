"""What does not satisfy ``fi.LinearSolver`` / ``fi.InnerSolver``, and where a protocol is
not enough yet: the entry points take the library's base classes (as their run-time checks
do), so a duck-typed solver is refused by the checker exactly where it would be at run time."""

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
fi.linear_solve(lambda v: v, torch.ones(1), solve=duck)  # type: ignore[arg-type]
method: fi.InnerSolver = fi.CG()  # type: ignore[assignment]
linear: fi.LinearSolver = fi.Anderson()  # type: ignore[assignment]

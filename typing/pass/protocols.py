"""User code written against ``fi.LinearSolver`` and ``fi.InnerSolver``, not concrete classes."""

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch

import funcimplicit as fi

dtype = torch.float64
TreeT = TypeVar("TreeT", bound=fi.TensorTree)


class Counting:
    """Wraps any linear solver and counts its solves: it satisfies ``fi.LinearSolver``."""

    def __init__(self, inner: fi.LinearSolver) -> None:
        self.inner = inner
        self.solves = 0

    @property
    def on_failure(self) -> Literal["warn", "raise", "ignore"]:
        return self.inner.on_failure

    @property
    def failure_hint(self) -> str:
        return self.inner.failure_hint

    def __call__(self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None) -> TreeT:
        self.solves += 1
        return self.inner(matvec, b, init)

    def run(
        self, matvec: Callable[[TreeT], TreeT], b: TreeT, init: Any = None
    ) -> fi.LinearSolveResult[TreeT]:
        self.solves += 1
        return self.inner.run(matvec, b, init)


def solve_twice(solver: fi.LinearSolver, b: torch.Tensor) -> torch.Tensor:
    first = solver(lambda v: 2.0 * v, b)
    return solver.run(lambda v: 2.0 * v, b, init=first).solution


counting = Counting(fi.CG())
b = torch.ones(3, dtype=dtype)
torch.testing.assert_close(solve_twice(counting, b), b / 2)
torch.testing.assert_close(solve_twice(fi.GMRES(), b), b / 2)
assert counting.solves == 2


def run_method(method: fi.InnerSolver, init: torch.Tensor) -> fi.Solution[torch.Tensor]:
    rtol, atol = method.tolerances(init.dtype)
    problem = fi.InnerProblem(
        root=lambda x: x**3 - 8.0,
        fixed_point=lambda x: x - (x**3 - 8.0) / 12.0,
        objective=None,
        rtol=rtol,
        atol=atol,
    )
    return method.run(problem, init)


for method in (fi.Newton(), fi.Broyden(), fi.Anderson(), fi.FixedPointIteration(maxiter=500)):
    solution = run_method(method, torch.full((2,), 1.5, dtype=dtype))
    assert bool(solution.converged), method
    torch.testing.assert_close(solution.value, torch.full((2,), 2.0, dtype=dtype))


# solve= takes a plain callable solve(matvec, b) -> x, or any object following fi.LinearSolver.
def dense(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    matrix: torch.Tensor = torch.func.jacfwd(matvec)(torch.zeros_like(b))
    x: torch.Tensor = torch.linalg.solve(matrix, b)
    return x


def double(v: torch.Tensor) -> torch.Tensor:
    return 2.0 * v


torch.testing.assert_close(fi.linear_solve(double, b, solve=dense), b / 2)
torch.testing.assert_close(fi.linear_solve(double, b, solve=Counting(fi.GMRES())), b / 2)
torch.testing.assert_close(
    fi.root_vjp(lambda x, a: 2 * x - a, b / 2, (b,), b, solve=dense)[0], b / 2
)

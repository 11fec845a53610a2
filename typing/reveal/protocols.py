"""Every built-in solver satisfies ``fi.LinearSolver``; every method ``fi.InnerSolver``."""

from typing import Literal, assert_type

import torch

import funcimplicit as fi

linear: list[fi.LinearSolver] = [
    fi.CG(),
    fi.NormalCG(),
    fi.GMRES(),
    fi.BiCGStab(),
    fi.Neumann(),
    fi.LU(),
    fi.Cholesky(),
    fi.Auto(),
]
inner: list[fi.InnerSolver] = [
    fi.FixedPointIteration(),
    fi.Anderson(),
    fi.Broyden(),
    fi.Newton(),
    fi.GradientDescent(),
]

solver = linear[0]
b = torch.ones(2)
pair = (b, b)
assert_type(solver(lambda v: v, b), torch.Tensor)
assert_type(solver(lambda v: v, pair, init=pair), tuple[torch.Tensor, torch.Tensor])
assert_type(solver.run(lambda v: v, b), fi.LinearSolveResult[torch.Tensor])
assert_type(solver.on_failure, Literal["warn", "raise", "ignore"])
assert_type(solver.failure_hint, str)

method = inner[0]
problem = fi.InnerProblem(
    root=lambda x: x, fixed_point=lambda x: x, objective=None, rtol=1e-6, atol=1e-6
)
assert_type(method.run(problem, b), fi.Solution[torch.Tensor])
assert_type(method.run(problem, {"w": b}).value, dict[str, torch.Tensor])
assert_type(method.tolerances(torch.float32), tuple[float, float])
assert_type(problem.tolerance(b), torch.Tensor)
assert_type(problem.finished(b, b), torch.Tensor)

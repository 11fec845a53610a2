"""The inner solvers, their results, and a user's own method plugged in by subclassing."""

from dataclasses import dataclass
from typing import Any, TypeVar

import optree
import torch

import funcimplicit as fi

dtype = torch.float64
TreeT = TypeVar("TreeT", bound=fi.TensorTree)


def F(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + theta


def T(x: dict[str, torch.Tensor], a: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": x["x"] ** 3 - a}


def L(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((w - 1.0) ** 2).sum() + 0.5 * lam * (w**2).sum()


theta = torch.tensor(0.5, dtype=dtype, requires_grad=True)
fixed = fi.solve_fixed_point(F, torch.zeros((), dtype=dtype), theta, method=fi.Anderson())
torch.autograd.backward(fixed.value)
assert bool(fixed.converged)
assert int(fixed.status) == fi.Status.CONVERGED
assert float(fixed.residual_norm) <= float(fixed.tolerance)

a = torch.tensor([8.0, 27.0], dtype=dtype)
root = fi.solve_root(T, {"x": torch.ones(2, dtype=dtype)}, a, method=fi.Newton(solve=fi.LU()))
torch.testing.assert_close(root.value["x"], torch.tensor([2.0, 3.0], dtype=dtype))
broyden = fi.solve_root(T, {"x": torch.ones(2, dtype=dtype)}, a, method=fi.Broyden(scale=0.1))
assert broyden.value["x"].shape == (2,)

lam = torch.tensor(1.0, dtype=dtype)
w = fi.minimize(L, torch.zeros(2, dtype=dtype), lam).value
torch.testing.assert_close(w, torch.full((2,), 0.5, dtype=dtype))
descent = fi.GradientDescent(step_size=0.5, maxiter=200)
torch.testing.assert_close(
    fi.minimize(L, torch.zeros(2, dtype=dtype), lam, method=descent).value, w
)
plain = fi.FixedPointIteration(damping=1.0, maxiter=200)
unrolled = fi.solve_fixed_point(
    F, torch.zeros((), dtype=dtype), theta, method=plain, implicit=False
)
assert unrolled.value.requires_grad


def norm(tree: Any) -> torch.Tensor:
    leaves: list[torch.Tensor] = optree.tree_leaves(tree)
    return torch.sqrt(torch.stack([(leaf * leaf).sum() for leaf in leaves]).sum())


@dataclass(frozen=True, kw_only=True)
class Picard(fi.InnerMethod):
    """Plain iteration ``x <- F(x)``: a user's own method, typed like the built-in ones."""

    def run(self, problem: fi.InnerProblem, init: TreeT) -> fi.Solution[TreeT]:
        x = init
        residual = norm(problem.root(x))  # ||x - F(x)||
        iterations = 0
        while iterations < self.maxiter and not bool(problem.finished(residual, x)):
            x = problem.fixed_point(x)
            residual = norm(problem.root(x))
            iterations += 1
        tolerance = problem.tolerance(x)
        converged = residual <= tolerance
        status = torch.where(converged, int(fi.Status.CONVERGED), int(fi.Status.MAX_ITERATIONS))
        return fi.Solution(x, torch.tensor(iterations), residual, tolerance, converged, status)


relaxed = fi.solve_fixed_point(F, torch.zeros((), dtype=dtype), theta, method=Picard(maxiter=200))
torch.testing.assert_close(relaxed.value, fixed.value, rtol=1e-6, atol=1e-6)


@dataclass(frozen=True, kw_only=True)
class Relaxed(fi.InnerMethod):
    """``x <- (1 - w) x + w F(x)`` in the init/step shape: the driver loop is the library's."""

    weight: float = 0.5

    def init(self, problem: fi.InnerProblem, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fx = problem.fixed_point(x)
        return fx, torch.linalg.vector_norm(fx - x)

    def step(
        self,
        problem: fi.InnerProblem,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        iteration: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = (1 - self.weight) * x + self.weight * state[0]
        return x, self.init(problem, x)

    def residual_norm(
        self, problem: fi.InnerProblem, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return state[1]


stepped = fi.solve_fixed_point(
    F, torch.zeros((), dtype=dtype), theta, method=Relaxed(maxiter=300, check_every=None)
)
torch.testing.assert_close(stepped.value, fixed.value, rtol=1e-6, atol=1e-6)

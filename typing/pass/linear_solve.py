"""Typed user code around ``fi.linear_solve`` and the linear solvers; it also runs."""

from typing import NamedTuple

import torch

import funcimplicit as fi

dtype = torch.float64


class Pair(NamedTuple):
    u: torch.Tensor
    w: torch.Tensor


def diag_matvec(v: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    return diag * v


def pair_matvec(v: Pair, scale: torch.Tensor) -> Pair:
    return Pair(scale * v.u, 2.0 * v.w)


def dict_matvec(v: dict[str, torch.Tensor], a: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"x": a @ v["x"], "y": v["y"] * 3.0}


diag = torch.tensor([2.0, 4.0], dtype=dtype, requires_grad=True)
b = torch.tensor([2.0, 2.0], dtype=dtype)

x = fi.linear_solve(diag_matvec, b, diag, solve=fi.CG())
torch.autograd.backward(x.sum())  # x is a Tensor (and Tensor.backward is untyped in torch)
assert diag.grad is not None
torch.testing.assert_close(diag.grad, -b / diag.detach() ** 2)

scale = torch.tensor(4.0, dtype=dtype)
pair = fi.linear_solve(pair_matvec, Pair(b, b), scale, solve=fi.GMRES())
torch.testing.assert_close(pair.u + pair.w, b / 4.0 + b / 2.0)  # the namedtuple's fields

a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=dtype)
tree = {"x": b, "y": torch.ones(3, dtype=dtype)}
solution = fi.linear_solve(dict_matvec, tree, a, solve=fi.LU(), init=tree)
torch.testing.assert_close(solution["y"], torch.full((3,), 1 / 3, dtype=dtype))

# Lists of parameters work as trees too.
params: list[torch.Tensor] = [torch.ones(2, dtype=dtype), torch.ones(1, dtype=dtype)]
doubled = fi.linear_solve(lambda v: [2.0 * leaf for leaf in v], params, solve=fi.BiCGStab())
assert len(doubled) == 2


def matvec(v: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=dtype) @ v


solvers: list[fi.LinearSolver] = [
    fi.CG(rtol=1e-12),
    fi.NormalCG(),
    fi.GMRES(restart=2),
    fi.BiCGStab(),
    fi.Neumann(preconditioner=lambda r: r / 5.0, maxiter=500),
    fi.LU(),
    fi.Cholesky(),
    fi.Auto(),
]
for solver in solvers:
    result = solver.run(matvec, b)
    assert bool(result.converged), (solver, result)
    torch.testing.assert_close(matvec(solver(matvec, b)), b)

ridge = fi.CG(ridge=1.0, on_failure="raise")
torch.testing.assert_close(ridge(matvec, b, init=b), fi.LU(ridge=1.0)(matvec, b))

"""torch.compile can trace the solvers' loops whole (static trip count, no host reads).

Under compile, nothing reads tensor values on the host: loops run their full ``maxiter``
with finished elements frozen, and the captured-tensor check (closure inspection, which
dynamo cannot trace) is left to eager runs. The aot_eager backend keeps this test fast; it
checks tracing and graph breaks, not inductor's code generation.
"""

from __future__ import annotations

import pytest
import torch

import funcimplicit as fi

F64 = torch.float64


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


def test_cg_compiles_without_graph_breaks() -> None:
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=F64)
    a, b = m @ m.T / 6 + torch.eye(6, dtype=F64), torch.randn(6, dtype=F64)
    solver = fi.CG(maxiter=8, rtol=1e-12)

    def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solver.run(lambda v: a @ v, b).solution

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a, b), solve(a, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled(a, b), torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_anderson_fixed_point_compiles_whole() -> None:
    a = torch.linspace(-1.0, 1.0, 4, dtype=F64)
    method = fi.Anderson(maxiter=12, on_failure="ignore")

    def solve(a: torch.Tensor) -> torch.Tensor:
        def layer(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return torch.tanh(0.5 * z + a)

        start = torch.zeros(4, dtype=F64)
        return fi.solve_fixed_point(layer, start, a, method=method, implicit=False).value

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")
    z = compiled(a)
    torch.testing.assert_close(z, solve(a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, torch.tanh(0.5 * z + a), rtol=1e-9, atol=1e-9)


# Dynamo itself reads .grad of a non-leaf tensor while tracing past the Function (a graph
# break at Function.apply) and torch warns about its own access; nothing here reads .grad.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_loss_backward_through_implicit_root() -> None:
    # torch.compile(loss) followed by .backward(): the custom backward is used (FINDINGS).
    def cube(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x**3 - a

    @fi.implicit_root(cube, solve=fi.CG(maxiter=5))
    def cube_root(init: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.sign() * a.abs() ** (1 / 3)

    def loss(a: torch.Tensor) -> torch.Tensor:
        return cube_root(torch.ones(2, dtype=F64), a).sum()

    a = torch.tensor([8.0, 27.0], dtype=F64, requires_grad=True)
    torch.compile(loss, backend="aot_eager")(a).backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None
    torch.testing.assert_close(a.grad, 1 / (3 * a.detach() ** (2 / 3)), rtol=1e-10, atol=0)

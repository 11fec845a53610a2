"""Solvers under ``torch.func.vmap``: each element as if solved alone; the batch stops early.

The matvec used for exact comparisons is ``(a * v).sum(-1)`` rather than ``a @ v``: under vmap
``a @ v`` becomes a batched matrix product whose BLAS kernel rounds differently from the
unbatched matrix-vector product (about 1e-16 relative), and on a cond-1e4 system Krylov methods
amplify that into a different iteration count. The elementwise form rounds identically batched
and unbatched, so the comparison isolates the solver's own loop. ``a @ v`` is tested too, on
well-conditioned batches where rounding cannot move the stopping decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optree
import pytest
import torch
from problems import (
    DENSE,
    F64,
    SOLVER_IDS,
    SOLVERS,
    Entry,
    contraction,
    nonsymmetric,
    rhs,
    spd,
)

import funcimplicit as fi

vmap = torch.func.vmap


def exact_matvec(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (a * v).sum(-1)


def batch_for(entry: Entry, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four systems of very different difficulty the entry handles, and a zero right-hand side.

    The element with ``b = 0`` takes no iteration; ``c I`` takes one; the others take many.
    """
    eye = torch.eye(n, dtype=F64)
    if entry.name == "Neumann":
        mats = [
            contraction(n, 0.9, seed),
            contraction(n, 0.5, seed + 1),
            0.6 * eye,
            contraction(n, 0.2, seed + 2),
            contraction(n, 0.7, seed + 3),
        ]
    elif entry.symmetric_only:
        mats = [
            spd(n, 1e4, seed),
            3 * eye,
            spd(n, 10.0, seed + 1),
            spd(n, 1e2, seed + 2),
            spd(n, 1e3, seed + 3),
        ]
    elif entry.name in ("GMRES_restart5", "NormalCG", "Normal_Cholesky"):
        mats = [
            nonsymmetric(n, 30.0, seed),
            3 * eye,
            spd(n, 10.0, seed + 1),
            nonsymmetric(n, 3.0, seed + 2),
            spd(n, 30.0, seed + 3),
        ]
    else:
        mats = [
            nonsymmetric(n, 1e4, seed),
            3 * eye,
            contraction(n, 0.9, seed + 1),
            spd(n, 1e3, seed + 2),
            nonsymmetric(n, 10.0, seed + 3),
        ]
    bs = [rhs(n, seed + i) * (i + 1) for i in range(len(mats))]  # different norms
    bs[-1] = torch.zeros(n, dtype=F64)
    return torch.stack(mats), torch.stack(bs)


class Counter:
    """Counts matvec calls: one per call, whether batched or not."""

    def __init__(self) -> None:
        self.calls = 0

    def runner(
        self, solver: Any, matvec: Callable[[torch.Tensor, Any], Any] = exact_matvec
    ) -> Callable[..., fi.LinearSolveResult[Any]]:
        def run(a: torch.Tensor, b: Any) -> fi.LinearSolveResult[Any]:
            def counted(v: Any) -> Any:
                self.calls += 1
                return matvec(a, v)

            result: fi.LinearSolveResult[Any] = solver.run(counted, b)
            return result

        return run


def assert_same_result(
    batched: fi.LinearSolveResult[Any],
    index: tuple[int, ...],
    single: fi.LinearSolveResult[Any],
    a: torch.Tensor,
) -> None:
    """Element ``index`` of a batched result equals the unbatched result for matrix ``a``.

    Same iterations and stopping decision exactly; solution to 1e-10 relative (CG, BiCGStab,
    Neumann are bitwise identical with this matvec; GMRES's own batched products, and LU's
    batched factorization, round differently by ~1e-12). Residual norms sit near rounding
    level, so they may differ by as much as the solutions do, times ``||A||`` (``||A||^2``
    for NormalCG's normal residual).
    """
    assert int(batched.iterations[index]) == int(single.iterations)
    assert bool(batched.converged[index]) == bool(single.converged)
    got = optree.tree_leaves(batched.solution, namespace="torch")
    want = optree.tree_leaves(single.solution, namespace="torch")
    scale = max(float(torch.linalg.vector_norm(w)) for w in want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g[index], w, rtol=1e-10, atol=1e-10 * scale)
    a_norm = float(torch.linalg.matrix_norm(a, 2))
    torch.testing.assert_close(
        batched.residual_norm[index],
        single.residual_norm,
        rtol=1e-6,
        atol=1e-10 * scale * max(a_norm, a_norm**2),
    )
    torch.testing.assert_close(batched.tolerance[index], single.tolerance, rtol=1e-14, atol=0)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_vmap_equals_unbatched(entry: Entry) -> None:
    n = 10
    a, b = batch_for(entry, n)
    counter = Counter()
    batched = vmap(counter.runner(entry.solver))(a, b)
    batch_calls = counter.calls

    single_calls = []
    for i in range(a.shape[0]):
        counter.calls = 0
        single = counter.runner(entry.solver)(a[i], b[i])
        single_calls.append(counter.calls)
        assert bool(single.converged)
        assert_same_result(batched, (i,), single, a[i])

    iterations = batched.iterations.tolist()
    assert iterations[-1] == (0 if entry.iterative else 1)  # b = 0
    if entry.iterative:
        assert len(set(iterations)) >= 3, iterations  # the batch really is heterogeneous
        # The batch costs its slowest element: exactly the matvecs of that element alone,
        # far below what running every element to the iteration cap would take.
        assert batch_calls == max(single_calls), (batch_calls, single_calls)
        # Explicitly: matvecs per iteration (BiCGStab: two) times the slowest element's
        # iterations, plus a few: the final true residual, NormalCG's A^T b, and one true
        # residual per GMRES restart.
        per_iteration = 2 if entry.name == "BiCGStab" else 1
        overhead = batch_calls - per_iteration * max(iterations)
        restarts = (
            math.ceil(max(iterations) / entry.solver.restart)
            if entry.name.startswith("GMRES")
            else 0
        )
        assert 0 <= overhead <= 2 + restarts, (batch_calls, iterations)
        maxiter = entry.solver.maxiter or max(10 * n, 100)
        assert max(iterations) < maxiter / 2
    else:
        # The operator is materialized once, batched (Normal: plus the one forward pass whose
        # VJP gives A^T).
        assert batch_calls == (2 if entry.solver.least_squares else 1)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_vmap_matmul_well_conditioned(entry: Entry) -> None:
    """With the natural ``a @ v`` (batched kernels) on well-conditioned systems."""
    n = 8
    eye = torch.eye(n, dtype=F64)
    if entry.name == "Neumann":
        a = torch.stack([contraction(n, 0.5, 0), 0.5 * eye, contraction(n, 0.3, 1)])
    elif entry.symmetric_only:
        a = torch.stack([spd(n, 10.0, 0), 2 * eye, spd(n, 5.0, 1)])
    else:
        a = torch.stack([nonsymmetric(n, 10.0, 0), 2 * eye, spd(n, 5.0, 1)])
    b = torch.stack([rhs(n, i) for i in range(3)])
    runner = Counter().runner(entry.solver, lambda m, v: m @ v)
    batched = vmap(runner)(a, b)
    for i in range(3):
        single = runner(a[i], b[i])
        assert_same_result(batched, (i,), single, a[i])
        torch.testing.assert_close(
            batched.solution[i], torch.linalg.solve(a[i], b[i]), rtol=1e-8, atol=0
        )


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_nested_vmap(entry: Entry) -> None:
    n = 6
    a1, b1 = batch_for(entry, n, seed=0)
    a2, b2 = batch_for(entry, n, seed=10)
    a = torch.stack([a1[:3], a2[1:4]])  # (2, 3, n, n)
    b = torch.stack([b1[2:], b2[2:]])  # (2, 3, n); b1[-1] = 0
    counter = Counter()
    batched = vmap(vmap(counter.runner(entry.solver)))(a, b)
    batch_calls = counter.calls
    single_calls = []
    for i in range(2):
        for j in range(3):
            counter.calls = 0
            single = counter.runner(entry.solver)(a[i, j], b[i, j])
            single_calls.append(counter.calls)
            assert_same_result(batched, (i, j), single, a[i, j])
    assert batch_calls == max(single_calls)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_vmap_shared_operator(entry: Entry) -> None:
    """``in_dims=(None, 0)``: one matrix, a batch of right-hand sides (and the converse)."""
    n = 8
    a, b = batch_for(entry, n)
    runner = Counter().runner(entry.solver)
    shared_a = vmap(runner, in_dims=(None, 0))(a[0], b)
    shared_b = vmap(runner, in_dims=(0, None))(a, b[0])
    for i in range(a.shape[0]):
        assert_same_result(shared_a, (i,), runner(a[0], b[i]), a[0])
        assert_same_result(shared_b, (i,), runner(a[i], b[0]), a[i])


@pytest.mark.parametrize("entry", DENSE, ids=lambda e: e.name)
@pytest.mark.parametrize("matvec", [exact_matvec, lambda m, v: m @ v], ids=["mulsum", "matmul"])
def test_dense_nested_vmap_outer_batched_operator(
    entry: Entry, matvec: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> None:
    """The factorization batched only at the outer level, right-hand sides at the inner one.

    FINDINGS: ``vmap(vmap(lu_solve))`` with the factors batched only at the outer level is
    silently wrong on torch 2.13 (errors ~1e4). The dense float64 reference catches that.
    """
    n = 5
    a = torch.stack([spd(n, 10.0, s) + 0.1 * torch.eye(n, dtype=F64) * s for s in range(3)])
    b = torch.stack([torch.stack([rhs(n, 10 * s + k) for k in range(4)]) for s in range(3)])

    def solve(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = entry.solver(lambda u: matvec(m, u), v)
        return x

    x = vmap(lambda m, vs: vmap(lambda v: solve(m, v))(vs))(a, b)
    reference = torch.linalg.solve(a[:, None], b[..., None])[..., 0]
    torch.testing.assert_close(x, reference, rtol=1e-10, atol=1e-12)

    # The converse: operator batched at the inner level only, shared right-hand side.
    x2 = vmap(lambda v: vmap(lambda m: solve(m, v))(a))(b[0])  # (4, 3, n)
    reference2 = torch.linalg.solve(a[None], b[0][:, None, :, None])[..., 0]
    torch.testing.assert_close(x2, reference2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_vmap_pytree(entry: Entry) -> None:
    """A dict right-hand side under vmap, with an operator coupling its leaves."""
    n = 5  # u: (3,), w: (2,)
    a, b = batch_for(entry, n)

    def run(m: torch.Tensor, vec: torch.Tensor) -> fi.LinearSolveResult[Any]:
        def matvec(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            out = exact_matvec(m, torch.cat([v["u"], v["w"]]))
            return {"u": out[:3], "w": out[3:]}

        result: fi.LinearSolveResult[Any] = entry.solver.run(matvec, {"u": vec[:3], "w": vec[3:]})
        return result

    batched = vmap(run)(a, b)
    assert set(batched.solution) == {"u", "w"}
    assert batched.solution["u"].shape == (a.shape[0], 3)
    for i in range(a.shape[0]):
        assert_same_result(batched, (i,), run(a[i], b[i]), a[i])


def test_vmap_direct_call_reports_failed_elements() -> None:
    """A batched direct call warns once, counting only the elements that failed."""
    n = 10
    eye = torch.eye(n, dtype=F64)
    a = torch.stack([3 * eye, spd(n, 1e6, 0), 2 * eye])
    b = torch.stack([rhs(n, i) for i in range(3)])
    solver = fi.CG(maxiter=5)

    def call(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return solver(lambda u: exact_matvec(m, u), v)

    with pytest.warns(fi.ConvergenceWarning, match=r"did not converge for 1 of 3 problems") as rec:
        x = vmap(call)(a, b)
    assert len(rec) == 1
    assert "after 5 iterations" in str(rec[0].message)
    torch.testing.assert_close(x[0], b[0] / 3, rtol=1e-12, atol=0)
    torch.testing.assert_close(x[2], b[2] / 2, rtol=1e-12, atol=0)

    strict = fi.CG(maxiter=5, on_failure="raise")
    with pytest.raises(fi.ConvergenceError, match="1 of 3 problems"):
        vmap(lambda m, v: strict(lambda u: exact_matvec(m, u), v))(a, b)

    result = vmap(lambda m, v: strict.run(lambda u: exact_matvec(m, u), v))(a, b)
    assert result.converged.tolist() == [True, False, True]
    assert result.iterations.tolist() == [1, 5, 1]


def test_vmap_cg_nonsymmetric_element_is_flagged() -> None:
    """One non-symmetric element in a CG batch is flagged; the others are as if solved alone."""
    n = 8
    g = torch.randn(
        n, n, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(4)
    )
    skew = torch.eye(n, dtype=F64) + 3 * (g - g.mT) / math.sqrt(2 * n)
    a = torch.stack([spd(n, 10.0, 0), skew, spd(n, 100.0, 1)])
    b = torch.stack([rhs(n, i) for i in range(3)])
    runner = Counter().runner(fi.CG())
    batched = vmap(runner)(a, b)
    assert batched.converged.tolist() == [True, False, True]
    for i in (0, 2):
        assert_same_result(batched, (i,), runner(a[i], b[i]), a[i])


def test_vmap_gmres_restarts_freeze_converged_elements() -> None:
    """GMRES(4): elements finishing in different restart cycles each keep their own iterate."""
    n = 12
    a = torch.stack(
        [spd(n, 10.0, 0), 2 * torch.eye(n, dtype=F64), nonsymmetric(n, 50.0, 1), spd(n, 3.0, 2)]
    )
    b = torch.stack([rhs(n, i) for i in range(4)])
    solver = fi.GMRES(restart=4, maxiter=1000)
    counter = Counter()
    batched = vmap(counter.runner(solver))(a, b)
    batch_calls, single_calls = counter.calls, []
    for i in range(4):
        counter.calls = 0
        single = counter.runner(solver)(a[i], b[i])
        single_calls.append(counter.calls)
        assert bool(single.converged)
        assert_same_result(batched, (i,), single, a[i])
    assert len(set(batched.iterations.tolist())) == 4
    assert max(batched.iterations.tolist()) > 8  # several restart cycles
    assert batch_calls == max(single_calls)

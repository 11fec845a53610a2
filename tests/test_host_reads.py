"""``check_every``: how many times a Krylov loop reads the batch's progress on the host.

Every host read of a loop goes through ``funcimplicit._core.loop.physical`` (the tensor beneath
the ``torch.func`` wrappers, read by ``progress``); the test counts its calls on CPU. Results
must not depend on ``check_every`` (converged elements are frozen): they are compared with
``check_every=1`` and with a dense float64 solve.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from problems import F64, nonsymmetric, rhs, spd

import funcimplicit as fi
from funcimplicit._core import loop as _loop

vmap = torch.func.vmap


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = _loop.physical

    def counted(tensor: torch.Tensor) -> Any:
        calls[0] += 1
        return original(tensor)

    monkeypatch.setattr(_loop, "physical", counted)
    return calls


@pytest.mark.parametrize("kind", ["CG", "BiCGStab", "GMRES"])
def test_reads_per_iteration(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    n = 40
    a = spd(n, 100.0, seed=1)
    b = rhs(n, seed=2)
    maxiter = 60  # above what each needs (about 30 iterations here)
    results = {}
    reads = {}
    for every in (1, 5, None):
        solver = getattr(fi, kind)(check_every=every, maxiter=maxiter)
        if kind == "GMRES":
            solver = fi.GMRES(check_every=every, maxiter=maxiter, restart=maxiter)
        calls = _count_reads(monkeypatch)
        results[every] = solver.run(lambda v: a @ v, b)
        reads[every] = calls[0]
        monkeypatch.undo()
    iterations = int(results[1].iterations)
    assert bool(results[1].converged)
    assert iterations >= 10
    # every=1: about one read per iteration; every=5: a fifth; None: none in the loop, only
    # the solve's two final reads outside it (the check for non-finite values, and whether a
    # failure reason must be computed): a constant per solve, whatever the iterations
    assert reads[1] >= iterations
    assert reads[5] <= iterations // 5 + 5
    assert reads[None] <= 2
    ref = torch.linalg.solve(a, b)
    for every in (5, None):
        assert int(results[every].iterations) == iterations
        # frozen once converged: the very same iterate. GMRES with check_every=1 on one plain
        # tensor solves its small (restart-sized) problem on the host in float64, the other
        # settings in tensors: the same iterations, iterates equal up to that rounding only.
        exact = 0.0 if kind != "GMRES" else 1e-12
        torch.testing.assert_close(
            results[every].solution, results[1].solution, rtol=exact, atol=exact
        )
        torch.testing.assert_close(results[every].solution, ref, rtol=1e-7, atol=0)


def test_no_reads_under_vmap_with_uneven_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 20
    a = torch.stack([nonsymmetric(n, c, seed=3) for c in (2.0, 1e3)])
    b = torch.stack([rhs(n, seed=4), rhs(n, seed=5)])
    maxiter = 80

    def solve(every: int | None) -> Any:
        solver = fi.GMRES(check_every=every, maxiter=maxiter, restart=20)
        return vmap(lambda a, b: solver.run(lambda v: a @ v, b))(a, b)

    eager = solve(1)
    calls = _count_reads(monkeypatch)
    silent = solve(None)
    assert calls[0] <= 2  # per solve, outside the loop (see test_reads_per_iteration)
    torch.testing.assert_close(silent.iterations, eager.iterations, rtol=0, atol=0)
    torch.testing.assert_close(silent.solution, eager.solution, rtol=0, atol=0)
    torch.testing.assert_close(silent.solution, torch.linalg.solve(a, b), rtol=1e-7, atol=0)


def test_check_every_is_validated() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="check_every"):
            fi.CG(check_every=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="check_every"):
            fi.Auto(check_every=bad)  # type: ignore[arg-type]


def test_auto_passes_check_every_to_its_krylov_path() -> None:
    solver = fi.Auto(check_every=None, maxiter=30).chosen(torch.zeros(600, dtype=F64))
    assert isinstance(solver, fi.GMRES)
    assert solver.check_every is None
    assert solver.maxiter == 30


def test_implicit_derivative_without_host_reads_in_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A backward CG with check_every=None and a fixed trip count: same gradient as dense.
    n = 15
    a = spd(n, 50.0, seed=6)
    b = rhs(n, seed=7)
    solver = fi.CG(check_every=None, maxiter=n + 5)
    grad = torch.func.grad(lambda b: fi.linear_solve(lambda v: a @ v, b, solve=solver).sum())(b)
    torch.testing.assert_close(
        grad, torch.linalg.solve(a, torch.ones(n, dtype=F64)), rtol=1e-8, atol=0
    )

"""Every inner method of the table (``inner_methods.METHODS``) on every kind of problem it
declares: the solution against a dense float64 reference, ``vmap`` against each problem
alone, implicit derivatives against the closed form ``d x*/d c = M`` of the affine problems,
the host-read option, failure reports and field validation.

A new inner method is one row of the table; these tests then cover it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from inner_methods import IDS, METHODS, PAIR_IDS, PAIRS, N, Row, problem
from torch.func import grad, jacrev, jvp, vmap

import funcimplicit as fi

F64 = torch.float64

# Tiny problems: one intra-op thread (the shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


# Error bound: the residual meets 1e-10 (1 + ||x||) and every problem's Jacobian has its
# inverse bounded by 2 (fixed point: ||(I - J)^-1|| for the rate-1/2 J is about 2; minimize:
# ||Q^-1|| = 2; least squares: ||(A^T A)^-1|| = 1), so x is within a few 1e-10 relative.
SOLUTION_RTOL = 1e-8


@pytest.mark.parametrize(("row", "kind"), PAIRS, ids=PAIR_IDS)
def test_solution_matches_the_dense_reference(row: Row, kind: str) -> None:
    p = problem(kind)
    c_before = p.c.clone()
    sol = p.solve(row.method, p.c)
    assert _rel(sol.value, p.reference(p.c)) <= SOLUTION_RTOL
    assert bool(sol.converged)
    assert int(sol.status) == fi.Status.CONVERGED
    assert 1 <= int(sol.iterations) <= row.method.maxiter
    assert bool(sol.residual_norm <= sol.tolerance)
    assert torch.equal(p.c, c_before)  # the user's tensor is never modified


@pytest.mark.parametrize(("row", "kind"), PAIRS, ids=PAIR_IDS)
def test_vmap_gives_each_problem_its_own_solve(row: Row, kind: str) -> None:
    """Per-element convergence: each element of a batch gets what it gets alone (values and
    iteration counts), including one whose start already solves it (c = 0: no iteration)."""
    p = problem(kind)
    cs = torch.stack([p.c, 3.0 * p.c, torch.zeros_like(p.c)])
    batched = vmap(lambda c: p.solve(row.method, c))(cs)
    for i, c in enumerate(cs):
        alone = p.solve(row.method, c)
        torch.testing.assert_close(batched.value[i], alone.value, rtol=1e-9, atol=1e-12)
        assert int(batched.iterations[i]) == int(alone.iterations)
        assert int(batched.status[i]) == fi.Status.CONVERGED
    assert int(batched.iterations[2]) == 0


@pytest.mark.parametrize(("row", "kind"), PAIRS, ids=PAIR_IDS)
def test_implicit_derivatives_match_the_closed_form(row: Row, kind: str) -> None:
    """``x* = M c``: jacrev gives ``M``, jvp ``M d``, backward ``M^T w``."""
    p = problem(kind)
    m = p.reference_matrix
    jac = jacrev(lambda c: p.solve(row.method, c).value)(p.c)
    torch.testing.assert_close(jac, m, rtol=1e-8, atol=1e-10)
    d = torch.linspace(-1.0, 1.0, p.c.shape[0], dtype=F64)
    tangent = jvp(lambda c: p.solve(row.method, c).value, (p.c,), (d,))[1]
    torch.testing.assert_close(tangent, m @ d, rtol=1e-8, atol=1e-10)
    c = p.c.clone().requires_grad_()
    w = torch.arange(1.0, N + 1, dtype=F64)
    (p.solve(row.method, c).value @ w).backward()
    assert c.grad is not None
    torch.testing.assert_close(c.grad, m.mT @ w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("row", "kind"), PAIRS, ids=PAIR_IDS)
def test_vmap_of_grad_matches_the_closed_form(row: Row, kind: str) -> None:
    p = problem(kind)
    w = torch.arange(1.0, N + 1, dtype=F64)
    cs = torch.stack([p.c, -2.0 * p.c])
    grads = vmap(grad(lambda c: p.solve(row.method, c).value @ w))(cs)
    torch.testing.assert_close(
        grads, (p.reference_matrix.mT @ w).expand(2, -1), rtol=1e-8, atol=1e-10
    )


@pytest.mark.parametrize(("row", "kind"), PAIRS, ids=PAIR_IDS)
def test_no_host_reads_gives_the_same_solution(row: Row, kind: str) -> None:
    """``check_every=None`` runs ``maxiter`` iterations with no early stop; a finished element
    is frozen, so value and iteration count are those of the early-stopping loop."""
    p = problem(kind)
    early = p.solve(row.method, p.c)
    full = p.solve(row.with_(check_every=None, maxiter=int(early.iterations) + 5), p.c)
    assert torch.equal(full.value, early.value)
    assert int(full.iterations) == int(early.iterations)
    every3 = p.solve(row.with_(check_every=3), p.c)
    assert torch.equal(every3.value, early.value)


@pytest.mark.parametrize(("row", "kind"), PAIRS, ids=PAIR_IDS)
def test_failure_is_reported_with_the_method_and_reason(row: Row, kind: str) -> None:
    """A tolerance of 0 cannot be met in floating point (the affine problems' residuals
    round to about 1e-16, not 0): the solve warns or raises naming the method."""
    p = problem(kind)
    name = type(row.method).__name__
    with pytest.raises(fi.ConvergenceError, match=rf"with {name}: did not converge"):
        p.solve(row.with_(rtol=0.0, atol=0.0, maxiter=3, on_failure="raise"), p.c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = p.solve(row.with_(rtol=0.0, atol=0.0, maxiter=3), p.c)
    assert any(issubclass(w.category, fi.ConvergenceWarning) for w in caught)
    assert not bool(sol.converged)
    assert int(sol.status) in (fi.Status.MAX_ITERATIONS, fi.Status.STAGNATION)
    # the result is still the best iterate: close to the solution after 3 iterations or fewer
    assert bool(torch.isfinite(sol.value).all())


@pytest.mark.parametrize("row", METHODS, ids=IDS)
@pytest.mark.parametrize(
    ("field", "value"),
    [("maxiter", 0), ("rtol", -1.0), ("atol", float("nan")), ("check_every", 0)],
)
def test_invalid_fields_are_refused_naming_the_method(row: Row, field: str, value: object) -> None:
    name = type(row.method).__name__
    with pytest.raises(ValueError, match=rf"{name}: {field} must be"):
        row.with_(**{field: value})


ALL_KINDS = ("fixed_point", "root", "minimize", "least_squares")


@pytest.mark.parametrize(
    ("row", "kind"),
    [(row, kind) for row in METHODS for kind in ALL_KINDS if kind not in row.kinds],
    ids=[f"{row.name}-{kind}" for row in METHODS for kind in ALL_KINDS if kind not in row.kinds],
)
def test_an_undeclared_kind_is_refused(row: Row, kind: str) -> None:
    p = problem(kind)
    with pytest.raises(TypeError, match="does not solve this kind of problem; it works with"):
        p.solve(row.method, p.c)


@pytest.mark.parametrize(
    ("row", "kind"),
    [(row, kind) for row, kind in PAIRS if not hasattr(row.method, "solve")],
    ids=[f"{row.name}-{kind}" for row, kind in PAIRS if not hasattr(row.method, "solve")],
)
def test_no_host_reads_in_the_loop(monkeypatch: pytest.MonkeyPatch, row: Row, kind: str) -> None:
    """Every host read of a loop (the batch-wide early stop, the line searches) goes through
    ``_core.loop.physical``: one per iteration with ``check_every=1``, none with ``None``.
    (A method with an inner linear solve, e.g. Newton, also reads in that solve: the linear
    solver's own ``check_every`` governs those.)"""
    from funcimplicit._core import loop as _loop

    calls = [0]
    original = _loop.physical

    def counted(tensor: torch.Tensor) -> object:
        calls[0] += 1
        return original(tensor)

    monkeypatch.setattr(_loop, "physical", counted)
    p = problem(kind)
    eager = p.solve(row.method, p.c)
    assert calls[0] >= int(eager.iterations)
    calls[0] = 0
    p.solve(row.with_(check_every=None), p.c)
    assert calls[0] == 0


def test_a_method_that_stops_itself_short_of_the_tolerance_reports_stagnation() -> None:
    """``terminate`` may stop an element that cannot progress (as L-BFGS does when no step
    lowers its objective): the driver reports ``STAGNATION`` for it, and ``MAX_ITERATIONS``
    for one that merely ran out of iterations."""
    from dataclasses import dataclass
    from typing import Any

    @dataclass(frozen=True, kw_only=True)
    class GivesUp(fi.InnerMethod):
        patience: int = 2  # stops itself after this many iterations

        def init(self, problem: fi.InnerProblem, x: Any) -> tuple[Any, torch.Tensor]:
            fx = problem.fixed_point(x)
            return fx, torch.zeros((), dtype=torch.int64)

        def step(
            self, problem: fi.InnerProblem, x: Any, state: Any, iteration: int
        ) -> tuple[Any, Any]:
            x = 0.5 * x + 0.5 * state[0]  # slow: never within the tolerance in a few steps
            return x, (problem.fixed_point(x), state[1] + 1)

        def residual_norm(self, problem: fi.InnerProblem, x: Any, state: Any) -> torch.Tensor:
            norm: torch.Tensor = torch.linalg.vector_norm(state[0] - x)
            return norm

        def terminate(self, problem: fi.InnerProblem, x: Any, state: Any) -> torch.Tensor:
            stop: torch.Tensor = super().terminate(problem, x, state) | (state[1] >= self.patience)
            return stop

    p = problem("fixed_point")
    stopped = p.solve(GivesUp(maxiter=10, on_failure="ignore"), p.c)
    assert int(stopped.status) == fi.Status.STAGNATION
    assert int(stopped.iterations) == 2
    ran_out = p.solve(GivesUp(maxiter=1, on_failure="ignore"), p.c)
    assert int(ran_out.status) == fi.Status.MAX_ITERATIONS
    with pytest.warns(fi.ConvergenceWarning, match=r"\(stagnation\).*stagnated"):
        p.solve(GivesUp(maxiter=10), p.c)

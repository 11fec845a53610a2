"""Edge inputs of the linear solvers (issue 15): non-finite numbers, empty tensors, stagnation.

- A NaN/Inf right-hand side, operator product or cotangent gives NaN in the result (never the
  answer 0 or a zero gradient), whatever ``on_failure`` says; per ``vmap`` element.
- 0-element right-hand sides solve to empty solutions with (empty) zero gradients.
- GMRES on a singular, inconsistent system stops on stagnation instead of running ``maxiter``.
References: dense float64 ``torch.linalg.solve`` / least squares, closed forms.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import pytest
import torch

import funcimplicit as fi

F64 = torch.float64
NAN = float("nan")


def _spd(n: int = 4) -> torch.Tensor:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    m = torch.randn(n, n, generator=g, dtype=F64)
    return m @ m.T + n * torch.eye(n, dtype=F64)


def _dense_user_solve(matvec: Any, b: torch.Tensor) -> torch.Tensor:
    x: torch.Tensor = torch.linalg.solve(torch.func.jacrev(matvec)(torch.zeros_like(b)), b)
    return x


def _solvers(on_failure: str) -> list[Any]:
    kw: Any = {"on_failure": on_failure}
    return [
        fi.CG(**kw),
        fi.GMRES(**kw),
        fi.BiCGStab(**kw),
        fi.Neumann(**kw, maxiter=200),
        fi.NormalCG(**kw),
        fi.LU(**kw),
        fi.Cholesky(**kw),
        fi.Normal(fi.Cholesky(), **kw),
    ]


SOLVER_IDS = ["CG", "GMRES", "BiCGStab", "Neumann", "NormalCG", "LU", "Cholesky", "Normal"]
# Neumann needs the spectral radius of I - A below 1: A = I + 0.1 S (S SPD, scaled) fits.
A = torch.eye(4, dtype=F64) + 0.1 * _spd() / torch.linalg.matrix_norm(_spd(), 2)


def _matvec(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return m @ v


# ------------------------------------------------------------------------------- NaN / Inf


@pytest.mark.parametrize("bad", [NAN, float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("index", range(len(SOLVER_IDS)), ids=SOLVER_IDS)
def test_non_finite_rhs_gives_nan_whatever_on_failure(index: int, bad: float) -> None:
    b = torch.tensor([bad, 1.0, 2.0, 3.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "ignore" means no warning: the NaN is the signal
        x = fi.linear_solve(_matvec, b, A, solve=_solvers("ignore")[index])
    assert x.shape == (4,)
    assert torch.isnan(x).all(), x  # before issue 15, Krylov solvers returned zeros here
    with pytest.warns(fi.ConvergenceWarning, match="NaN or Inf"):
        x = fi.linear_solve(_matvec, b, A, solve=_solvers("warn")[index])
    assert torch.isnan(x).all()
    with pytest.raises(fi.ConvergenceError, match="NaN or Inf"):
        fi.linear_solve(_matvec, b, A, solve=_solvers("raise")[index])


@pytest.mark.parametrize("index", range(len(SOLVER_IDS)), ids=SOLVER_IDS)
def test_direct_call_and_run_show_nan(index: int) -> None:
    solver = _solvers("ignore")[index]
    b = torch.tensor([1.0, NAN, 2.0, 3.0], dtype=F64)
    assert torch.isnan(solver(lambda v: A @ v, b)).all()
    result = solver.run(lambda v: A @ v, b)
    assert torch.isnan(result.solution).all()
    assert not bool(result.converged)


@pytest.mark.parametrize("index", range(len(SOLVER_IDS)), ids=SOLVER_IDS)
def test_non_finite_operator_product_gives_nan(index: int) -> None:
    m = A.clone()
    m[2, 1] = NAN
    b = torch.ones(4, dtype=F64)
    x = fi.linear_solve(_matvec, b, m, solve=_solvers("ignore")[index])
    assert torch.isnan(x).all(), x


@pytest.mark.parametrize("index", range(len(SOLVER_IDS)), ids=SOLVER_IDS)
def test_nan_cotangent_gives_nan_gradient(index: int) -> None:
    """A NaN cotangent must not become a zero gradient (it was, with every Krylov method):
    linear_solve's rule (the implicit rule of ``A x - b``) refuses it, whatever on_failure."""
    b = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64, requires_grad=True)
    m = A.clone().requires_grad_()
    x = fi.linear_solve(_matvec, b, m, solve=_solvers("ignore")[index])
    weights = torch.tensor([1.0, NAN, 1.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="cotangent of the solution contains NaN"):
        torch.autograd.grad((x * weights).sum(), (b, m))


def _user_solvers() -> list[Any]:
    return [_dense_user_solve, lambda matvec, b: fi.CG(on_failure="ignore")(matvec, b)]


@pytest.mark.parametrize("solve", _user_solvers(), ids=["dense", "cg"])
def test_user_solver_nan_rhs(solve: Any) -> None:
    b = torch.tensor([NAN, 1.0, 2.0, 3.0], dtype=F64)
    with pytest.warns(fi.ConvergenceWarning, match="NaN or Inf"):
        x = fi.linear_solve(_matvec, b, A, solve=solve)
    assert torch.isnan(x).all()


@pytest.mark.parametrize("index", range(len(SOLVER_IDS)), ids=SOLVER_IDS)
def test_nan_stays_in_its_vmap_element(index: int) -> None:
    solver = _solvers("ignore")[index]
    bs = torch.stack(
        [
            torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64),
            torch.tensor([1.0, NAN, 3.0, 4.0], dtype=F64),
            torch.tensor([-1.0, 0.5, 0.0, 2.0], dtype=F64),
        ]
    )
    xs = torch.func.vmap(lambda b: fi.linear_solve(_matvec, b, A, solve=solver))(bs)
    assert torch.isnan(xs[1]).all()
    for k in (0, 2):
        torch.testing.assert_close(xs[k], torch.linalg.solve(A, bs[k]), rtol=1e-8, atol=1e-10)

    # per-task gradients in the matrix, one task with a NaN cotangent
    weights = torch.ones(3, 4, dtype=F64)
    weights[1, 0] = NAN

    def loss(w: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return (w * fi.linear_solve(_matvec, b, m, solve=solver)).sum()

    # A NaN cotangent is refused (the implicit rule raises, naming it) rather than spread.
    per_task = torch.func.vmap(torch.func.grad(loss, argnums=2), (0, 0, None))
    with pytest.raises(ValueError, match="cotangent of the solution contains NaN"):
        per_task(weights, bs.nan_to_num(), A)
    weights[1, 0] = 1.0
    grads = per_task(weights, bs.nan_to_num(), A)
    for k in (0, 2):
        b = bs[k]
        expected = -torch.outer(torch.linalg.solve(A.T, weights[k]), torch.linalg.solve(A, b))
        torch.testing.assert_close(grads[k], expected, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- 0 elements


@pytest.mark.parametrize("index", range(len(SOLVER_IDS)), ids=SOLVER_IDS)
def test_empty_rhs_solves_to_empty(index: int) -> None:
    solver = _solvers("raise")[index]
    b = torch.zeros(0, dtype=F64, requires_grad=True)
    m = torch.zeros(0, 0, dtype=F64, requires_grad=True)
    x = fi.linear_solve(_matvec, b, m, solve=solver)
    assert x.shape == (0,)
    grad_b, grad_m = torch.autograd.grad(x.sum(), (b, m))
    assert grad_b.shape == (0,)
    assert grad_m.shape == (0, 0)
    result = solver.run(lambda v: v, torch.zeros(0, dtype=F64))
    assert bool(result.converged)
    assert result.solution.shape == (0,)
    # Not tested: jacrev/jacfwd of an empty output vmap over a batch of size 0, which torch
    # 2.13 itself does not support for reductions: torch.func.jacrev(lambda b: b.norm() * b)
    # on torch.zeros(0) raises IndexError inside torch, without this library.


@pytest.mark.parametrize(
    "index", [0, 1, 2, 5, 6, 7], ids=["CG", "GMRES", "BiCGStab", "LU", "Cholesky", "Normal"]
)
def test_tree_with_an_empty_leaf_matches_dense(index: int) -> None:
    solver = _solvers("raise")[index]
    m = _spd(3)

    def matvec(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"a": m @ v["a"], "empty": 3.0 * v["empty"]}

    b = {"a": torch.tensor([1.0, 2.0, 3.0], dtype=F64), "empty": torch.zeros(2, 0, dtype=F64)}
    x = fi.linear_solve(matvec, b, solve=solver)
    torch.testing.assert_close(x["a"], torch.linalg.solve(m, b["a"]), rtol=1e-8, atol=1e-10)
    assert x["empty"].shape == (2, 0)


# ------------------------------------------------------------------------- GMRES stagnation


def test_gmres_stops_on_stagnation_for_an_inconsistent_singular_system() -> None:
    a = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    b = torch.ones(3, dtype=F64)  # the 0 eigenvalue's component cannot be matched
    start = time.perf_counter()
    result = fi.GMRES(maxiter=10_000).run(lambda v: a @ v, b)
    elapsed = time.perf_counter() - start
    assert int(result.iterations) < 30  # before issue 15: thousands of steps, seconds
    assert elapsed < 2.0
    assert not bool(result.converged)
    assert result.stagnated is not None
    assert bool(result.stagnated)
    # the least-squares residual is 1 (the second component); rounding near the zero pivot
    # costs a few percent, never more than the start's ||b|| = sqrt(3)
    assert 1.0 - 1e-12 <= float(result.residual_norm) <= 1.1
    with pytest.warns(fi.ConvergenceWarning, match="stagnated"):
        fi.GMRES(maxiter=10_000)(lambda v: a @ v, b)
    with pytest.raises(fi.ConvergenceError, match=r"stagnated.*ridge"):
        fi.linear_solve(_matvec, b, a, solve=fi.GMRES(maxiter=10_000, on_failure="raise"))


def test_gmres_stagnation_with_small_restart() -> None:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(5)
    basis = torch.randn(8, 8, generator=g, dtype=F64) + 3 * torch.eye(8, dtype=F64)
    eig = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 0], dtype=F64)
    a = basis @ torch.diag(eig) @ torch.linalg.inv(basis)
    b = torch.randn(8, generator=g, dtype=F64)
    result = fi.GMRES(maxiter=10_000, restart=3, on_failure="ignore").run(lambda v: a @ v, b)
    assert int(result.iterations) < 200
    assert not bool(result.converged)
    assert result.stagnated is not None
    assert bool(result.stagnated)


def test_gmres_consistent_singular_system_still_converges() -> None:
    a = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    b = torch.tensor([1.0, 0.0, 4.0], dtype=F64)  # in the range of A
    result = fi.GMRES().run(lambda v: a @ v, b)
    assert bool(result.converged)
    torch.testing.assert_close(a @ result.solution, b)


def test_gmres_slow_but_steady_progress_is_not_stagnation() -> None:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(7)
    a = torch.diag(torch.linspace(1, 1000, 50, dtype=F64)) + 0.5 * torch.randn(
        50, 50, generator=g, dtype=F64
    )
    b = torch.randn(50, generator=g, dtype=F64)
    result = fi.GMRES(restart=5, maxiter=100, on_failure="ignore").run(lambda v: a @ v, b)
    assert int(result.iterations) == 100  # ran its whole budget: it kept making progress
    assert result.stagnated is not None
    assert not bool(result.stagnated)
    # and with enough budget it converges
    result = fi.GMRES(restart=5, maxiter=20_000).run(lambda v: a @ v, b)
    assert bool(result.converged)
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)


def test_gmres_stagnation_is_per_vmap_element() -> None:
    a = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    bs = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 4.0]], dtype=F64)
    result = torch.func.vmap(lambda b: fi.GMRES(on_failure="ignore").run(lambda v: a @ v, b))(bs)
    assert result.stagnated is not None
    assert result.stagnated.tolist() == [True, False]
    assert result.converged.tolist() == [False, True]
    torch.testing.assert_close(a @ result.solution[1], bs[1])


# ------------------------------------------------------- preconditioners closing over tensors
#
# A preconditioner r -> r / d_task that closes over a per-task tensor under vmap(grad) crashed
# torch (INTERNAL ASSERT wrapper == nullptr): the solve ran inside autograd.Function.forward,
# where the outer torch.func levels are lowered, so the captured tensor's level was not active.
# The solve now runs outside, at the caller's levels. The solution does not depend on the
# preconditioner, so its captured tensors need no derivative. Reference: x = b / d.

PRECONDITIONED = {
    "CG": lambda pc: fi.CG(preconditioner=pc),
    "GMRES": lambda pc: fi.GMRES(preconditioner=pc),
    "BiCGStab": lambda pc: fi.BiCGStab(preconditioner=pc),
    "Neumann": lambda pc: fi.Neumann(preconditioner=pc),
}


def _diag_solve(d: torch.Tensor, b: torch.Tensor, make: Any) -> torch.Tensor:
    x: torch.Tensor = fi.linear_solve(lambda v, d: d * v, b, d, solve=make(lambda r: r / d))
    return x


def _tasks() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(11)
    d = torch.rand(3, 4, generator=g, dtype=F64) + 1.0
    b = torch.randn(3, 4, generator=g, dtype=F64)
    return d, b


@pytest.mark.parametrize("name", list(PRECONDITIONED))
def test_preconditioner_closing_over_a_per_task_tensor_under_vmap_grad(name: str) -> None:
    make = PRECONDITIONED[name]
    d, b = _tasks()

    def loss(d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _diag_solve(d, b, make).square().sum()

    grad_d, grad_b = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(d, b)
    # loss = sum (b / d)^2: d/dd = -2 b^2 / d^3, d/db = 2 b / d^2
    torch.testing.assert_close(grad_d, -2 * b**2 / d**3, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(grad_b, 2 * b / d**2, rtol=1e-8, atol=1e-12)
    jac = torch.func.vmap(torch.func.jacrev(lambda d, b: _diag_solve(d, b, make)))(d, b)
    torch.testing.assert_close(jac, torch.diag_embed(-b / d**2), rtol=1e-8, atol=1e-12)


def test_preconditioner_closing_over_a_tensor_classic_autograd_and_second_order() -> None:
    make = PRECONDITIONED["CG"]
    d, b = _tasks()
    d0 = d[0].clone().requires_grad_()
    _diag_solve(d0, b[0], make).sum().backward()  # type: ignore[no-untyped-call]
    assert d0.grad is not None
    torch.testing.assert_close(d0.grad, -b[0] / d[0] ** 2, rtol=1e-8, atol=1e-12)

    # reverse-over-reverse second derivatives: d^2/db^2 sum (b / d)^2 = diag(2 / d^2)
    def loss(d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _diag_solve(d, b, make).square().sum()

    hess = torch.func.vmap(torch.func.jacrev(torch.func.jacrev(loss, argnums=1), argnums=1))(d, b)
    torch.testing.assert_close(hess, torch.diag_embed(2 / d**2), rtol=1e-8, atol=1e-12)


def test_preconditioner_capture_under_forward_over_reverse_is_explained() -> None:
    """jacfwd(jacrev) runs a solve inside the Function's jvp rule, where the captured tensor's
    level is not active; torch's internal assert is turned into an explanation."""
    make = PRECONDITIONED["CG"]
    d, b = _tasks()

    def loss(d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _diag_solve(d, b, make).square().sum()

    with pytest.raises(RuntimeError, match=r"preconditioner.*jacrev\(jacrev\)"):
        torch.func.hessian(loss, argnums=1)(d[0], b[0])


# --- What a solver detects is kept in the result's status (issue 16) -----------------------


def test_status_of_a_converged_solve_and_of_max_iterations() -> None:
    a, b = _spd(), torch.ones(4, dtype=F64)
    done = fi.CG().run(lambda v: a @ v, b)
    assert int(done.status) == fi.Status.CONVERGED
    assert bool(done.converged)
    assert done.solution is done.value
    short = fi.CG(maxiter=1, on_failure="ignore").run(lambda v: a @ v, b)
    assert int(short.status) == fi.Status.MAX_ITERATIONS
    with pytest.warns(fi.ConvergenceWarning, match=r"did not converge for the problem \(max_"):
        fi.CG(maxiter=1)(lambda v: a @ v, b)


def test_cg_reports_an_indefinite_operator() -> None:
    a = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=F64))
    b = torch.tensor([1.0, 1.0, 0.0], dtype=F64)  # p^T A p = 0 at the first step
    result = fi.CG(on_failure="ignore").run(lambda v: a @ v, b)
    assert int(result.status) == fi.Status.INDEFINITE
    with pytest.raises(fi.ConvergenceError, match=r"\(indefinite\)"):
        fi.CG(on_failure="raise")(lambda v: a @ v, b)


def test_bicgstab_reports_a_breakdown() -> None:
    # <r_hat, A r> = 0 at the start: the recurrence cannot take a step
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    b = torch.tensor([1.0, 0.0], dtype=F64)
    result = fi.BiCGStab(on_failure="ignore").run(lambda v: a @ v, b)
    assert int(result.status) == fi.Status.BREAKDOWN


def test_cholesky_of_an_indefinite_matrix_is_a_breakdown() -> None:
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    result = fi.Cholesky(on_failure="ignore").run(lambda v: a @ v, torch.ones(2, dtype=F64))
    assert int(result.status) == fi.Status.BREAKDOWN


def test_gmres_stagnation_and_nan_are_statuses() -> None:
    a = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    result = fi.GMRES(maxiter=10_000, on_failure="ignore").run(
        lambda v: a @ v, torch.ones(3, dtype=F64)
    )
    assert int(result.status) == fi.Status.STAGNATION
    nan = fi.CG(on_failure="ignore").run(lambda v: v, torch.tensor([1.0, NAN], dtype=F64))
    assert int(nan.status) == fi.Status.NONFINITE
    assert not bool(nan.converged)

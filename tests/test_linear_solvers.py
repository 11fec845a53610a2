"""Every linear solver against an independent reference (a dense float64 solve or a closed form).

The solver table and the problems live in ``problems.py``; each test runs over the pairs
(solver, matrix kind) that the solver is meant to handle.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from problems import (
    DENSE,
    F64,
    ITERATIVE,
    KINDS,
    PAIR_IDS,
    PAIRS,
    SOLVER_IDS,
    SOLVERS,
    TREES,
    Entry,
    cond,
    contraction,
    nonsymmetric,
    orthogonal,
    ravel,
    rel_err,
    rhs,
    spd,
    tree_matvec,
    tree_size,
    unravel_like,
)

import funcimplicit as fi

EPS64 = torch.finfo(F64).eps


def well_kind(entry: Entry) -> str:
    """A well-conditioned kind the entry handles (contraction for Neumann)."""
    for kind in ("nonsym_well", "spd_well", "contraction"):
        if kind in entry.kinds:
            return kind
    raise AssertionError(entry)


def effective_system(
    solver: Any, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The square system ``(M, c)`` the solver is documented to solve, in float64."""
    a, b = a.to(F64), b.to(F64)
    eye = torch.eye(a.shape[-1], dtype=F64)
    if solver.least_squares:  # Normal, NormalCG: (A^T A + ridge I) x = A^T b
        return a.mT @ a + solver.ridge * eye, a.mT @ b
    return a + solver.ridge * eye, b


def default_rtol(solver: Any, dtype: torch.dtype) -> float:
    """The documented default: sqrt(eps) for dense solvers, 1e-10 / 1e-5 for iterative ones."""
    if solver.rtol is not None:
        return float(solver.rtol)
    dense = solver.materializes or (solver.least_squares and solver.inner.materializes)
    if dense:
        return math.sqrt(torch.finfo(dtype).eps)
    return {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]


def assert_solves(solver: Any, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> None:
    """``x`` meets the solver's stopping rule and agrees with the dense float64 solution.

    Residual: at most ``rtol`` plus the rounding slack ``sqrt(eps)`` relative to ``||c||`` that
    the library allows between a Krylov recurrence and the true residual (``rounding_slack``).
    Error: the classical bound ``||x - x*|| / ||x*|| <= cond(M) ||c - M x|| / ||c||``, plus the
    reference solve's own error (about ``cond(M) n eps``).
    """
    m, c = effective_system(solver, a, b)
    x = x.to(F64).reshape(-1)
    m, c = m.reshape(x.numel(), x.numel()), c.reshape(-1)
    relres = float(torch.linalg.vector_norm(c - m @ x) / torch.linalg.vector_norm(c))
    accept = default_rtol(solver, F64) + math.sqrt(EPS64)
    assert relres <= accept, f"relative residual {relres:.2e} > {accept:.2e}"
    kappa = cond(m)
    bound = kappa * (relres + 10 * x.numel() * EPS64)
    err = rel_err(x, torch.linalg.solve(m, c))
    assert err <= bound, f"relative error {err:.2e} > cond * residual bound {bound:.2e}"


# --------------------------------------------------------------------------------------------
# Accuracy on the table


@pytest.mark.parametrize("n", [1, 7, 20])
@pytest.mark.parametrize(("entry", "kind"), PAIRS, ids=PAIR_IDS)
def test_matches_dense_reference(entry: Entry, kind: str, n: int) -> None:
    a = KINDS[kind](n, n)
    b = rhs(n, n)
    result = entry.solver.run(lambda v: a @ v, b)
    assert bool(result.converged), f"residual {float(result.residual_norm):.2e}"
    assert_solves(entry.solver, a, b, result.solution)
    # The direct call returns the same solution and does not warn when converged.
    torch.testing.assert_close(entry.solver(lambda v: a @ v, b), result.solution, rtol=0, atol=0)


def test_ill_conditioned_table_is_ill_conditioned() -> None:
    """Guard on the fixtures: the "ill" kinds really have condition number about 1e6."""
    for kind in ("spd_ill", "nonsym_ill"):
        assert 5e5 <= cond(KINDS[kind](20, 20)) <= 5e6
    for kind in ("spd_well", "nonsym_well", "contraction"):
        assert cond(KINDS[kind](20, 20)) <= 100


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_ridge(entry: Entry) -> None:
    n = 12
    if entry.name == "Neumann":
        # Neumann iterates with I - (A + ridge I) = J - ridge I: keep its spectral radius < 1.
        a, ridge = contraction(n, 0.5, 3), 0.2
    else:
        a, ridge = KINDS[well_kind(entry)](n, 3), 0.5
    b = rhs(n, 3)
    solver = entry.with_(ridge=ridge)
    x = solver(lambda v: a @ v, b)
    assert_solves(solver, a, b, x)
    # And it is not the solution without ridge.
    m, c = effective_system(entry.solver, a, b)
    assert rel_err(x, torch.linalg.solve(m, c)) > 1e-3


@pytest.mark.parametrize(
    "entry", [e for e in SOLVERS if "spd_well" in e.kinds], ids=lambda e: e.name
)
def test_ridge_regularizes_a_singular_matrix(entry: Entry) -> None:
    n, rank = 10, 4
    q = orthogonal(n, 5)[:, :rank]
    a = (q * torch.linspace(1.0, 2.0, rank, dtype=F64)) @ q.mT  # PSD, rank 4
    b = rhs(n, 5)
    solver = entry.with_(ridge=1e-2)
    x = solver(lambda v: a @ v, b)
    assert_solves(solver, a, b, x)


# --------------------------------------------------------------------------------------------
# Warm start


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_warm_start(entry: Entry) -> None:
    n = 20
    a = KINDS[well_kind(entry)](n, 11)
    b = rhs(n, 11)
    m, c = effective_system(entry.solver, a, b)
    exact = torch.linalg.solve(m, c)
    noise = torch.randn(
        n, dtype=F64, generator=torch.Generator(device=torch.get_default_device()).manual_seed(0)
    )
    near = exact + 1e-6 * exact.norm() * noise / noise.norm()
    near_before = near.clone()

    cold = entry.solver.run(lambda v: a @ v, b)
    warm = entry.solver.run(lambda v: a @ v, b, init=near)
    assert bool(warm.converged)
    assert_solves(entry.solver, a, b, warm.solution)
    torch.testing.assert_close(near, near_before, rtol=0, atol=0)  # init is not modified
    if entry.iterative:
        assert int(warm.iterations) < int(cold.iterations)
        # Starting at the solution costs no iteration at all.
        at_solution = entry.solver.run(lambda v: a @ v, b, init=exact)
        assert int(at_solution.iterations) == 0
        assert bool(at_solution.converged)
    else:
        torch.testing.assert_close(warm.solution, cold.solution, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Pytrees


def coupled_case(entry: Entry, size: int, seed: int) -> torch.Tensor:
    kind = well_kind(entry)
    return KINDS[kind](size, seed)


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_coupled_pytree(entry: Entry, tree: str) -> None:
    shapes, pack = TREES[tree]
    size = tree_size(shapes)
    a = coupled_case(entry, size, size)
    b = unravel_like(rhs(size, size), shapes, pack)
    x = entry.solver(tree_matvec(a, shapes, pack), b)
    assert optree.tree_structure(x, namespace="torch") == optree.tree_structure(
        b, namespace="torch"
    )
    for got, want in zip(
        optree.tree_leaves(x, namespace="torch"),
        optree.tree_leaves(b, namespace="torch"),
        strict=True,
    ):
        assert got.shape == want.shape
        assert got.dtype == want.dtype
    assert_solves(entry.solver, a, ravel(b), ravel(x))


@pytest.mark.parametrize(
    "entry", [e for e in SOLVERS if not e.symmetric_only], ids=lambda e: e.name
)
def test_leaves_coupled_closed_form(entry: Entry) -> None:
    """``(u, w) -> (2u + C w, 3w)``: the solution needs the coupling ``C`` between leaves.

    Closed form: ``w = b_w / 3``, ``u = (b_u - C w) / 2``. A solver that treated each leaf as
    its own system (dropping ``C``) would get ``u = b_u / 2``.
    """
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(2)
    coupling = torch.randn(3, 2, dtype=F64, generator=gen) * 0.3  # small: Neumann converges

    def matvec(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"u": 2 * v["u"] + coupling @ v["w"], "w": 3 * v["w"]}

    bu = torch.randn(3, dtype=F64, generator=gen)
    bw = torch.randn(2, dtype=F64, generator=gen)
    if entry.name == "Neumann":
        # Neumann needs spectral radius of I - A below 1: use A/4 and b/4 (same solution).
        def matvec_n(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: t / 4 for k, t in matvec(v).items()}

        x = entry.solver(matvec_n, {"u": bu / 4, "w": bw / 4})
    else:
        x = entry.solver(matvec, {"u": bu, "w": bw})
    w = bw / 3
    u = (bu - coupling @ w) / 2
    torch.testing.assert_close(x["w"], w, rtol=1e-9, atol=0)
    torch.testing.assert_close(x["u"], u, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "entry", [e for e in SOLVERS if "spd_well" in e.kinds], ids=lambda e: e.name
)
def test_leaves_coupled_symmetric(entry: Entry) -> None:
    """A symmetric coupling ``[[2I, C], [C^T, 3I]]`` across a tuple of leaves, dense reference."""
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(3)
    coupling = torch.randn(3, 2, dtype=F64, generator=gen) * 0.4

    def matvec(v: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        u, w = v
        return 2 * u + coupling @ w, coupling.mT @ u + 3 * w

    full = torch.cat(
        [
            torch.cat([2 * torch.eye(3, dtype=F64), coupling], 1),
            torch.cat([coupling.mT, 3 * torch.eye(2, dtype=F64)], 1),
        ]
    )
    b = (torch.randn(3, dtype=F64, generator=gen), torch.randn(2, dtype=F64, generator=gen))
    x = entry.solver(matvec, b)
    assert isinstance(x, tuple)
    assert_solves(entry.solver, full, torch.cat(b), torch.cat(x))


# --------------------------------------------------------------------------------------------
# 0-d problems and default iteration caps


def fresh(entry: Entry) -> Any:
    """The entry's solver class with every field at its default (maxiter=None included)."""
    return type(entry.solver)()


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_zero_dimensional(entry: Entry) -> None:
    # A = 0.6: symmetric positive, and I - A = 0.4 is a contraction (Neumann).
    b = torch.tensor(3.0, dtype=F64)
    for solver in (entry.solver, fresh(entry)):
        result = solver.run(lambda v: 0.6 * v, b)
        assert result.solution.shape == ()
        assert bool(result.converged)
        assert result.iterations.shape == ()
        assert int(result.iterations) >= 1  # a default maxiter of 0 would return x = 0
        torch.testing.assert_close(result.solution, b / 0.6, rtol=1e-9, atol=0)


@pytest.mark.parametrize("entry", ITERATIVE, ids=lambda e: e.name)
def test_default_maxiter_on_scalar_tree(entry: Entry) -> None:
    """A tree of 0-d leaves (a dict of two scalars), default solver: still iterates and solves."""
    b = {"p": torch.tensor(1.0, dtype=F64), "q": torch.tensor(-2.0, dtype=F64)}
    result = fresh(entry).run(lambda v: {"p": 0.6 * v["p"], "q": 0.8 * v["q"]}, b)
    assert bool(result.converged)
    assert int(result.iterations) >= 1
    torch.testing.assert_close(result.solution["p"], b["p"] / 0.6, rtol=1e-9, atol=0)
    torch.testing.assert_close(result.solution["q"], b["q"] / 0.8, rtol=1e-9, atol=0)


# --------------------------------------------------------------------------------------------
# float32


# Digits kept on a float32 system of condition number 1e3. The a-priori bound is only
# cond * rtol = 1e3 * 1e-5 = 1e-2; these are the design targets of the project's findings
# (CG, GMRES and LU keep about 5 digits where JAXopt's normal CG kept about 2): measured errors
# are 1e-6..1e-5 (4e-5 for BiCGStab, whose residual is erratic), each limit about 2x above that.
FLOAT32_LIMITS = {"CG": 2e-5, "GMRES": 2e-5, "LU": 2e-5, "Cholesky": 2e-5, "BiCGStab": 1e-4}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(FLOAT32_LIMITS))
def test_float32_accuracy(name: str, seed: int) -> None:
    entry = next(e for e in SOLVERS if e.name == name)
    n = 20
    a64 = spd(n, 1e3, seed) if entry.symmetric_only else nonsymmetric(n, 1e3, seed)
    b64 = rhs(n, seed)
    a, b = a64.float(), b64.float()
    result = entry.solver.run(lambda v: a @ v, b)
    assert result.solution.dtype == torch.float32
    assert result.residual_norm.dtype == torch.float32
    assert bool(result.converged)
    err = rel_err(result.solution, torch.linalg.solve(a.double(), b.double()))
    assert err <= FLOAT32_LIMITS[name], f"{name}: relative error {err:.1e}"


# --------------------------------------------------------------------------------------------
# Statistics


@pytest.mark.parametrize("n", [7, 20])
@pytest.mark.parametrize(("entry", "kind"), PAIRS, ids=PAIR_IDS)
def test_statistics(entry: Entry, kind: str, n: int) -> None:
    """``iterations``, ``residual_norm``, ``tolerance`` and ``converged`` mean what they say.

    LinearSolveResult documents ``residual_norm = ||b - (A + ridge I) x||`` (for NormalCG the
    normal residual), ``tolerance = max(rtol * ||b||, atol)`` and ``converged`` as
    ``residual_norm <= tolerance`` with a finite solution, up to the rounding slack.
    """
    a = KINDS[kind](n, n + 100)
    b = rhs(n, n + 100)
    result = entry.solver.run(lambda v: a @ v, b)
    m, c = effective_system(entry.solver, a, b)
    x = result.solution

    assert result.iterations.dtype == torch.int64
    assert result.iterations.shape == ()
    assert result.converged.dtype == torch.bool
    assert result.converged.shape == ()
    for stat in (result.residual_norm, result.tolerance):
        assert stat.dtype == F64
        assert stat.shape == ()

    if entry.iterative:
        maxiter = entry.solver.maxiter or max(10 * n, 100)
        assert 1 <= int(result.iterations) <= maxiter
    else:
        assert int(result.iterations) == 1

    want_tol = max(default_rtol(entry.solver, F64) * float(c.norm()), entry.solver.atol)
    assert float(result.tolerance) == pytest.approx(want_tol, rel=1e-13)

    # The residual of x recomputed here; rounding in A x alone is up to about n eps ||A|| ||x||.
    residual = float(torch.linalg.vector_norm(c - m @ x))
    rounding = 4 * n * EPS64 * float(torch.linalg.matrix_norm(m, 2) * x.norm())
    assert float(result.residual_norm) == pytest.approx(residual, rel=1e-6, abs=rounding)

    # The documented rule (LinearSolveResult.converged): within the tolerance is converged;
    # a converged Krylov solve may exceed it by the rounding slack sqrt(eps) * ||b|| only.
    finite = bool(torch.isfinite(x).all()) and math.isfinite(float(result.residual_norm))
    within = finite and float(result.residual_norm) <= float(result.tolerance)
    slack = math.sqrt(EPS64) * float(c.norm()) if entry.iterative else 0.0
    within_slack = finite and float(result.residual_norm) <= float(result.tolerance) + slack
    message = (
        f"converged={bool(result.converged)} but residual_norm="
        f"{float(result.residual_norm):.3e}, tolerance={float(result.tolerance):.3e}"
    )
    if within:
        assert bool(result.converged), message
    if bool(result.converged):
        assert within_slack, message


ILL_PAIRS = [(e, k) for e, k in PAIRS if e.iterative and k.endswith("_ill")]


@pytest.mark.parametrize(("entry", "kind"), ILL_PAIRS, ids=[f"{e.name}-{k}" for e, k in ILL_PAIRS])
def test_converged_flag_matches_residual(entry: Entry, kind: str) -> None:
    """``converged`` agrees with the residual and tolerance returned, as documented.

    On cond-1e6 systems a Krylov recurrence drifts from the true residual by rounding. The
    documented contract (``LinearSolveResult.converged``): a true residual within the
    tolerance is always converged; a solve reported converged has a true residual within
    ``tolerance + sqrt(eps) * ||b||`` (the rounding slack, only for methods whose recurrence
    met the tolerance). Both directions are checked.
    """
    n = 20
    disagreements = []
    for seed in range(30):
        a, b = KINDS[kind](n, seed), rhs(n, seed)
        result = entry.solver.run(functools.partial(torch.matmul, a), b)
        _, c = effective_system(entry.solver, a, b)
        slack = math.sqrt(torch.finfo(F64).eps) * float(c.norm())
        residual, tolerance = float(result.residual_norm), float(result.tolerance)
        if residual <= tolerance and not bool(result.converged):
            disagreements.append((seed, "within tolerance but not converged", residual / tolerance))
        if bool(result.converged) and residual > tolerance + slack:
            disagreements.append((seed, "converged beyond the slack", residual / tolerance))
    assert not disagreements, f"(seed, what, residual/tolerance): {disagreements}"


@pytest.mark.parametrize("entry", ITERATIVE, ids=lambda e: e.name)
def test_atol_dominates(entry: Entry) -> None:
    n = 20
    a = KINDS[well_kind(entry)](n, 4)
    b = rhs(n, 4)
    _, c = effective_system(entry.solver, a, b)
    atol = 1e-3 * float(c.norm())
    loose = entry.with_(rtol=0.0, atol=atol)
    result = loose.run(lambda v: a @ v, b)
    tight = entry.solver.run(lambda v: a @ v, b)
    assert float(result.tolerance) == atol
    assert bool(result.converged)
    assert float(result.residual_norm) <= atol
    assert int(result.iterations) < int(tight.iterations)


# --------------------------------------------------------------------------------------------
# Failures are reported


def skew_matrix(n: int, seed: int) -> torch.Tensor:
    """Strongly non-symmetric with a positive definite symmetric part: ``I + 3 K``, K skew."""
    g = torch.randn(
        n,
        n,
        dtype=F64,
        generator=torch.Generator(device=torch.get_default_device()).manual_seed(seed),
    )
    k = (g - g.mT) / math.sqrt(2 * n)
    return torch.eye(n, dtype=F64) + 3 * k


def test_cg_on_nonsymmetric_is_reported() -> None:
    n = 12
    a = skew_matrix(n, 0)
    b = rhs(n, 0)
    result = fi.CG().run(lambda v: a @ v, b)
    assert not bool(result.converged)
    assert float(result.residual_norm) > float(result.tolerance)
    with pytest.warns(fi.ConvergenceWarning, match=r"CG\(matvec, b\): did not converge"):
        fi.CG()(lambda v: a @ v, b)
    with pytest.raises(fi.ConvergenceError, match=r"(?s)symmetric.*GMRES"):
        fi.CG(on_failure="raise")(lambda v: a @ v, b)


def test_cholesky_on_nonsymmetric_is_reported() -> None:
    """Cholesky reads one triangle only; the residual check catches a non-symmetric ``A``."""
    n = 8
    a = spd(n, 10.0, 1) + torch.triu(torch.ones(n, n, dtype=F64), diagonal=1)
    b = rhs(n, 1)
    result = fi.Cholesky().run(lambda v: a @ v, b)
    assert not bool(result.converged)
    with pytest.warns(fi.ConvergenceWarning, match=r"Cholesky\(matvec, b\)"):
        fi.Cholesky()(lambda v: a @ v, b)


@given(n=st.integers(2, 12), seed=st.integers(0, 10_000), skew=st.floats(0.5, 5.0))
def test_cg_never_silently_wrong(n: int, seed: int, skew: float) -> None:
    """On a non-symmetric ``A`` CG may fail, but a result flagged converged is right."""
    g = torch.randn(
        n,
        n,
        dtype=F64,
        generator=torch.Generator(device=torch.get_default_device()).manual_seed(seed),
    )
    a = torch.eye(n, dtype=F64) + skew * (g - g.mT) / math.sqrt(2 * n) + 0.3 * g / math.sqrt(n)
    b = rhs(n, seed)
    result = fi.CG().run(lambda v: a @ v, b)
    if bool(result.converged):
        assert_solves(fi.CG(), a, b, result.solution)


def failing_case(entry: Entry) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A solver and a problem it cannot solve: one iteration, or a singular matrix (dense)."""
    n = 10
    if entry.iterative:
        kind = "spd_ill" if "spd_ill" in entry.kinds else well_kind(entry)
        return entry.with_(maxiter=1), KINDS[kind](n, 0), rhs(n, 0)
    return entry.solver, torch.zeros(n, n, dtype=F64), rhs(n, 0)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_on_failure(entry: Entry) -> None:
    solver, a, b = failing_case(entry)
    name = type(solver).__name__

    result = solver.run(lambda v: a @ v, b)  # run never warns (filterwarnings = error)
    assert not bool(result.converged)

    with pytest.warns(
        fi.ConvergenceWarning, match=rf"^{name}\(matvec, b\): did not converge"
    ) as record:
        x = solver(lambda v: a @ v, b)
    assert len(record) == 1
    assert record[0].filename == __file__  # the warning points at the caller's line
    message = str(record[0].message)
    if entry.iterative:
        assert "after 1 iterations" in message
        assert "residual norm" in message
    else:
        assert "ridge" in message
    torch.testing.assert_close(x, result.solution, rtol=0, atol=0, equal_nan=True)

    strict = dataclasses.replace(solver, on_failure="raise")
    with pytest.raises(fi.ConvergenceError, match=rf"^{name}\(matvec, b\): did not converge"):
        strict(lambda v: a @ v, b)
    assert not bool(strict.run(lambda v: a @ v, b).converged)  # run does not raise either

    quiet = dataclasses.replace(solver, on_failure="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x_quiet = quiet(lambda v: a @ v, b)
    torch.testing.assert_close(x_quiet, result.solution, rtol=0, atol=0, equal_nan=True)


def test_cholesky_indefinite_is_reported() -> None:
    a = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=F64))
    b = torch.ones(3, dtype=F64)
    assert not bool(fi.Cholesky().run(lambda v: a @ v, b).converged)
    with pytest.raises(fi.ConvergenceError, match="ridge"):
        fi.Cholesky(on_failure="raise")(lambda v: a @ v, b)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_nan_is_reported(entry: Entry) -> None:
    """A matvec producing NaN is never reported as converged."""
    b = rhs(5, 0)
    result = entry.solver.run(lambda v: v * torch.nan, b)
    assert not bool(result.converged)
    with pytest.warns(fi.ConvergenceWarning, match="NaN or Inf"):
        entry.solver(lambda v: v * torch.nan, b)


# --------------------------------------------------------------------------------------------
# Preconditioning


def badly_scaled_spd(n: int) -> torch.Tensor:
    """``D^1/2 S D^1/2`` with ``S`` well conditioned and ``D`` spanning 1..1e4: Jacobi fixes it."""
    d = torch.logspace(0, 4, n, dtype=F64)
    return d.sqrt()[:, None] * spd(n, 5.0, 0) * d.sqrt()[None, :]


@pytest.mark.parametrize("name", ["CG", "BiCGStab", "GMRES"])
def test_jacobi_preconditioner_reduces_iterations(name: str) -> None:
    n = 30
    a = badly_scaled_spd(n)
    b = rhs(n, 0)
    inverse_diagonal = 1 / torch.diagonal(a)
    solver_type = {"CG": fi.CG, "BiCGStab": fi.BiCGStab, "GMRES": fi.GMRES}[name]
    plain = solver_type(on_failure="ignore").run(lambda v: a @ v, b)
    jacobi = solver_type(preconditioner=lambda v: inverse_diagonal * v).run(lambda v: a @ v, b)
    assert bool(jacobi.converged)
    assert int(jacobi.iterations) < int(plain.iterations) / 2
    assert_solves(solver_type(), a, b, jacobi.solution)


def test_jacobi_preconditioner_neumann() -> None:
    """Jacobi iteration: Neumann with ``M = D^-1`` on a diagonally dominant ``A``."""
    n = 20
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(1)
    a = torch.diag(torch.logspace(0, 3, n, dtype=F64)) + 0.3 * torch.randn(
        n, n, dtype=F64, generator=gen
    ) / math.sqrt(n)
    b = rhs(n, 1)
    plain = fi.Neumann(maxiter=50).run(lambda v: a @ v, b)  # I - A has radius ~1e3: diverges
    assert not bool(plain.converged)
    jacobi = fi.Neumann(preconditioner=lambda v: v / torch.diagonal(a)).run(lambda v: a @ v, b)
    assert bool(jacobi.converged)
    assert_solves(fi.Neumann(), a, b, jacobi.solution)


def test_preconditioner_normal_cg() -> None:
    """NormalCG preconditions the normal equations: Jacobi of ``A^T A`` (column scaling)."""
    n = 20
    a = nonsymmetric(n, 3.0, 2) * torch.logspace(0, 3, n, dtype=F64)  # columns scaled 1..1e3
    b = rhs(n, 2)
    column_norms2 = (a * a).sum(0)
    plain = fi.NormalCG(on_failure="ignore").run(lambda v: a @ v, b)
    jacobi = fi.NormalCG(preconditioner=lambda v: v / column_norms2).run(lambda v: a @ v, b)
    assert bool(jacobi.converged)
    assert int(jacobi.iterations) < int(plain.iterations)
    assert_solves(fi.NormalCG(), a, b, jacobi.solution)


# --------------------------------------------------------------------------------------------
# Zero right-hand side


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_zero_rhs(entry: Entry) -> None:
    n = 6
    a = KINDS[well_kind(entry)](n, 0)
    b = torch.zeros(n, dtype=F64)
    result = entry.solver.run(lambda v: a @ v, b)
    assert bool(result.converged)
    torch.testing.assert_close(result.solution, torch.zeros(n, dtype=F64), rtol=0, atol=0)
    # Iterative solvers take no step; dense solvers document one (the factorization).
    assert int(result.iterations) == (0 if entry.iterative else 1)
    tree_b = {"u": torch.zeros(2, dtype=F64), "w": torch.zeros((), dtype=F64)}
    tree_result = entry.solver.run(lambda v: {"u": 0.6 * v["u"], "w": 0.6 * v["w"]}, tree_b)
    assert bool(tree_result.converged)
    assert all(bool((leaf == 0).all()) for leaf in tree_result.solution.values())


# --------------------------------------------------------------------------------------------
# GMRES: one cycle minimizes the residual over the Krylov space


def test_gmres_cycle_minimizes_residual() -> None:
    """After ``m`` Arnoldi steps from 0, GMRES's ``x`` is ``argmin ||b - A x||`` over K_m(A, b).

    Reference: least squares over an orthonormal basis of ``[b, A b, ..., A^{m-1} b]``.
    """
    n, m = 15, 6
    a = nonsymmetric(n, 100.0, 9)
    b = rhs(n, 9)
    result = fi.GMRES(restart=m, maxiter=m).run(lambda v: a @ v, b)
    assert int(result.iterations) == m
    assert not bool(result.converged)
    columns = [b]
    for _ in range(m - 1):
        columns.append(a @ columns[-1])
    basis, _ = torch.linalg.qr(torch.stack(columns, 1))
    y = torch.linalg.lstsq(a @ basis, b[:, None]).solution[:, 0]
    torch.testing.assert_close(result.solution, basis @ y, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Property tests: sizes, structures, conditioning

# Per solver: matrix families and the largest log10 condition number it is held to. NormalCG
# squares it (1e3 -> 1e6); restarted and short-recurrence methods are held to moderate ones.
FAMILIES: dict[str, tuple[tuple[str, ...], float]] = {
    "CG": (("spd",), 6.0),
    "Cholesky": (("spd",), 6.0),
    "LU": (("spd", "nonsym", "contraction"), 6.0),
    "GMRES": (("spd", "nonsym", "contraction"), 6.0),
    "GMRES_restart5": (("spd", "nonsym"), 2.0),
    "BiCGStab": (("spd", "nonsym", "contraction"), 3.0),
    "NormalCG": (("spd", "nonsym", "contraction"), 3.0),
    "Normal_Cholesky": (("spd", "nonsym", "contraction"), 3.0),
    "Neumann": (("contraction",), 0.0),
}


def build(family: str, n: int, log_cond: float, seed: int) -> torch.Tensor:
    if family == "spd":
        return spd(n, 10.0**log_cond, seed)
    if family == "nonsym":
        return nonsymmetric(n, 10.0**log_cond, seed)
    return contraction(n, 0.9, seed)


@st.composite
def problems(draw: Any) -> tuple[Entry, torch.Tensor, torch.Tensor, int]:
    entry = draw(st.sampled_from(SOLVERS))
    families, max_log_cond = FAMILIES[entry.name]
    family = draw(st.sampled_from(families))
    n = draw(st.integers(1, 12))
    log_cond = draw(st.floats(0.0, max_log_cond))
    seed = draw(st.integers(0, 2**16))
    return entry, build(family, n, log_cond, seed), rhs(n, seed), n


@given(problems())
def test_property_matches_dense(problem: tuple[Entry, torch.Tensor, torch.Tensor, int]) -> None:
    entry, a, b, _ = problem
    result = entry.solver.run(lambda v: a @ v, b)
    assert bool(result.converged)
    assert_solves(entry.solver, a, b, result.solution)


@given(
    entry=st.sampled_from(SOLVERS),
    tree=st.sampled_from(list(TREES)),
    seed=st.integers(0, 2**16),
)
def test_property_pytrees(entry: Entry, tree: str, seed: int) -> None:
    shapes, pack = TREES[tree]
    size = tree_size(shapes)
    a = coupled_case(entry, size, seed)
    b = unravel_like(rhs(size, seed), shapes, pack)
    x = entry.solver(tree_matvec(a, shapes, pack), b)
    assert optree.tree_structure(x, namespace="torch") == optree.tree_structure(
        b, namespace="torch"
    )
    assert_solves(entry.solver, a, ravel(b), ravel(x))


def test_dense_table_is_complete() -> None:
    """Every public solver class appears in the table."""
    classes = {type(e.solver) for e in SOLVERS}
    assert classes == {
        fi.CG,
        fi.NormalCG,
        fi.Normal,
        fi.GMRES,
        fi.BiCGStab,
        fi.Neumann,
        fi.LU,
        fi.Cholesky,
    }
    assert {type(e.solver) for e in DENSE} == {fi.LU, fi.Cholesky, fi.Normal}

"""Bad inputs get clear errors naming the call; solver objects behave as small values."""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import pytest
import torch
from problems import (
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

N = 4
A = spd(N, 10.0, 0)


def good_b() -> torch.Tensor:
    return rhs(N, 0)


def call_name(entry: Entry) -> str:
    """The solver's name as its messages start (``CG.run(matvec, b)`` or ``CG(matvec, b)``)."""
    return type(entry.solver).__name__ + r"(\.run)?\(matvec, b\)"


# --------------------------------------------------------------------------------------------
# matvec output


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_matvec_wrong_structure(entry: Entry) -> None:
    with pytest.raises(ValueError, match=rf"(?s){call_name(entry)}.*matvec.*structure"):
        entry.solver.run(lambda v: (A @ v, A @ v), good_b())
    with pytest.raises(ValueError, match=r"(?s)matvec.*structure"):
        entry.solver.run(lambda v: {"x": A @ v["u"]}, {"u": good_b()})


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_matvec_wrong_shape(entry: Entry) -> None:
    with pytest.raises(ValueError, match=rf"(?s){call_name(entry)}.*matvec.*shape \(3,\).*\(4,\)"):
        entry.solver.run(lambda v: (A @ v)[:3], good_b())
    with pytest.raises(ValueError, match=r"(?s)matvec.*shape"):
        entry.solver.run(lambda v: (A @ v)[None], good_b())


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_matvec_wrong_dtype(entry: Entry) -> None:
    with pytest.raises(TypeError, match=rf"(?s){call_name(entry)}.*matvec.*float32.*float64"):
        entry.solver.run(lambda v: (A @ v).float(), good_b())


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_matvec_non_tensor_output(entry: Entry) -> None:
    # Same structure as b (one leaf), but the leaf is a Python float. A least-squares solver
    # (Normal, NormalCG) meets it first in its torch.func.vjp, which raises its own error;
    # either way the message names matvec.
    error = ValueError if entry.solver.least_squares else TypeError
    with pytest.raises(error, match=r"(?s)matvec.*[Tt]ensor"):
        entry.solver.run(lambda v: 1.0, torch.tensor(2.0, dtype=F64))


def test_matvec_errors_through_linear_solve() -> None:
    with pytest.raises(ValueError, match=r"(?s)matvec.*shape"):
        fi.linear_solve(lambda v, a: (a @ v)[:3], good_b(), A)
    with pytest.raises(TypeError, match=r"(?s)matvec.*float32"):
        fi.linear_solve(lambda v, a: (a @ v).float(), good_b(), A, solve=fi.CG())


# --------------------------------------------------------------------------------------------
# The right-hand side and init


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_b_non_tensor_leaf(entry: Entry) -> None:
    with pytest.raises(TypeError, match=rf"(?s){call_name(entry)}.*b.*torch\.Tensor.*float"):
        entry.solver.run(lambda v: v, {"x": good_b(), "y": 1.0})
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        entry.solver.run(lambda v: v, [1.0, 2.0])


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_b_integer_or_complex(entry: Entry) -> None:
    with pytest.raises(TypeError, match=rf"(?s){call_name(entry)}.*floating.*int64"):
        entry.solver.run(lambda v: v, torch.arange(3))
    with pytest.raises(TypeError, match=r"(?s)complex"):
        entry.solver.run(lambda v: v, torch.ones(3, dtype=torch.complex128))
    with pytest.raises(TypeError, match=r"(?s)floating.*bool"):
        entry.solver.run(lambda v: v, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_b_mixed_dtypes(entry: Entry) -> None:
    b = {"x": torch.ones(2, dtype=F64), "y": torch.ones(2, dtype=torch.float32)}
    with pytest.raises(TypeError, match=r"(?s)one dtype.*float64.*float32"):
        entry.solver.run(lambda v: v, b)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_b_empty(entry: Entry) -> None:
    with pytest.raises(ValueError, match=r"at least one tensor"):
        entry.solver.run(lambda v: v, {})


# A least-squares solver's init fixes the shape of x (see test_normal_cg_init_layout).
@pytest.mark.parametrize(
    "entry", [e for e in SOLVERS if not e.solver.least_squares], ids=lambda e: e.name
)
def test_init_layout(entry: Entry) -> None:
    b = good_b()
    with pytest.raises(ValueError, match=r"(?s)init.*shape"):
        entry.solver.run(lambda v: A @ v, b, init=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"(?s)init.*structure"):
        entry.solver.run(lambda v: A @ v, b, init=(torch.zeros(N, dtype=F64),))
    with pytest.raises(TypeError, match=r"(?s)init.*float32"):
        entry.solver.run(lambda v: A @ v, b, init=torch.zeros(N))


def test_normal_cg_init_layout() -> None:
    """NormalCG's ``init`` fixes the shape of ``x`` (A may be non-square); it must match A."""
    rect = torch.ones(5, 3, dtype=F64)
    b = torch.ones(5, dtype=F64)
    with pytest.raises(ValueError, match=r"(?s)NormalCG.*init"):
        fi.NormalCG().run(lambda v: rect @ v, b)  # x shaped like b: rect @ x fails
    with pytest.raises(TypeError, match=r"(?s)init.*torch\.Tensor"):
        fi.NormalCG().run(lambda v: rect @ v, b, init=[0.0, 0.0, 0.0])


def test_linear_solve_bad_b() -> None:
    with pytest.raises(TypeError, match=r"(?s)linear_solve.*b.*torch\.Tensor"):
        fi.linear_solve(lambda v, a: a @ v, [1.0, 2.0, 3.0, 4.0], A)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"(?s)linear_solve.*floating"):
        fi.linear_solve(lambda v, a: a @ v, torch.arange(4), A)
    with pytest.raises(ValueError, match=r"(?s)linear_solve.*init.*shape"):
        fi.linear_solve(lambda v, a: a @ v, good_b(), A, init=torch.zeros(3, dtype=F64))


# --------------------------------------------------------------------------------------------
# Solver fields


ALL_CLASSES = [fi.CG, fi.NormalCG, fi.GMRES, fi.BiCGStab, fi.Neumann, fi.LU, fi.Cholesky]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_invalid_common_fields(cls: type) -> None:
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"{name}: rtol must be >= 0; received -0.001"):
        cls(rtol=-1e-3)
    with pytest.raises(ValueError, match=rf"{name}: atol must be >= 0"):
        cls(atol=-1.0)
    with pytest.raises(ValueError, match=rf"{name}: ridge must be >= 0"):
        cls(ridge=-0.1)
    for bad in (float("nan"), float("inf"), "1e-3", True):  # None is the default: valid
        with pytest.raises(TypeError, match=rf"{name}: rtol must be a finite number"):
            cls(rtol=bad)
    with pytest.raises(TypeError, match=rf"{name}: atol must be a finite number"):
        cls(atol=None)
    with pytest.raises(ValueError, match=rf"(?s){name}: on_failure must be one of.*'warn'.*'loud'"):
        cls(on_failure="loud")
    with pytest.raises(TypeError):
        cls(1e-6)  # keyword-only fields


@pytest.mark.parametrize(
    "cls", [fi.CG, fi.NormalCG, fi.GMRES, fi.BiCGStab, fi.Neumann], ids=lambda c: c.__name__
)
def test_invalid_iterative_fields(cls: type) -> None:
    name = cls.__name__
    for bad in (0, -5, 2.5, True, "10"):
        with pytest.raises(ValueError, match=rf"{name}: maxiter must be a positive int"):
            cls(maxiter=bad)
    with pytest.raises(TypeError, match=rf"{name}: preconditioner must be a callable"):
        cls(preconditioner=torch.ones(3))
    cls(maxiter=1)  # the smallest valid cap
    cls(preconditioner=lambda v: v)


def test_gmres_restart() -> None:
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"GMRES: restart must be a positive int"):
            fi.GMRES(restart=bad)  # type: ignore[arg-type]
    assert fi.GMRES(restart=1).restart == 1


@pytest.mark.parametrize("cls", [fi.LU, fi.Cholesky], ids=lambda c: c.__name__)
def test_dense_solvers_have_no_iteration_fields(cls: type) -> None:
    with pytest.raises(TypeError, match="maxiter"):
        cls(maxiter=10)
    with pytest.raises(TypeError, match="preconditioner"):
        cls(preconditioner=lambda v: v)


# --------------------------------------------------------------------------------------------
# Solver objects are small immutable values


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_solver_value_semantics(entry: Entry) -> None:
    solver = entry.solver
    twin = dataclasses.replace(solver)
    assert twin == solver
    assert hash(twin) == hash(solver)
    assert {solver: 1}[twin] == 1
    other = dataclasses.replace(solver, atol=1e-3)
    assert other != solver
    assert copy.deepcopy(solver) == solver
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.rtol = 1e-3
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.ridge = 1.0
    text = repr(other)
    assert text.startswith(type(solver).__name__ + "(")
    assert "atol=0.001" in text
    assert "ridge=0.0" in text
    assert "on_failure='warn'" in text


def test_solver_equality_across_types() -> None:
    assert fi.CG() != fi.NormalCG()  # type: ignore[comparison-overlap]
    assert fi.LU() != fi.Cholesky()  # type: ignore[comparison-overlap]
    assert fi.GMRES(restart=5) != fi.GMRES(restart=6)
    assert fi.CG(rtol=1e-6) == fi.CG(rtol=1e-6)
    assert hash(fi.GMRES(restart=5, maxiter=100)) == hash(fi.GMRES(restart=5, maxiter=100))
    precondition = torch.nn.Identity()
    assert fi.CG(preconditioner=precondition) == fi.CG(preconditioner=precondition)
    assert "rtol=1e-06" in repr(fi.CG(rtol=1e-6))
    assert repr(fi.GMRES()).count("restart=20") == 1


def test_result_is_frozen() -> None:
    result = fi.CG().run(lambda v: A @ v, good_b())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.converged = torch.tensor(False)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# linear_solve argument checks


def _dense_grad(b: torch.Tensor) -> torch.Tensor:
    a = A.clone().requires_grad_()
    torch.linalg.solve(a, b).sum().backward()
    assert a.grad is not None
    return a.grad


def test_linear_solve_differentiates_captured_tensor_requiring_grad() -> None:
    # Captured tensors used to be refused; the rule now differentiates what matvec reads,
    # also through functools.partial and a nested helper.
    a = A.clone().requires_grad_()

    def helper(v: torch.Tensor) -> torch.Tensor:
        return a @ v

    for matvec in (lambda v: a @ v, functools.partial(lambda v, m: m @ v, m=a), helper):
        (g,) = torch.autograd.grad(fi.linear_solve(matvec, good_b()).sum(), a)
        torch.testing.assert_close(g, _dense_grad(good_b()), rtol=1e-9, atol=1e-11)


def test_linear_solve_differentiates_captured_transformed_tensor() -> None:
    """Under ``torch.func.grad`` a captured tensor is a wrapped tensor: differentiated too."""

    def loss(a: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(lambda v: a @ v, good_b()).sum()

    torch.testing.assert_close(
        torch.func.grad(loss)(A), _dense_grad(good_b()), rtol=1e-9, atol=1e-11
    )


def test_linear_solve_allows_captured_constants() -> None:
    """A captured tensor that needs no gradient is a constant: allowed, and correct."""
    x = fi.linear_solve(lambda v: A @ v, good_b(), solve=fi.LU())
    torch.testing.assert_close(x, torch.linalg.solve(A, good_b()))
    with torch.no_grad():
        fixed = A.clone()
    x = fi.linear_solve(lambda v: fixed @ v, good_b(), solve=fi.CG())
    torch.testing.assert_close(x, torch.linalg.solve(A, good_b()))


# A plain callable solve(matvec, b) is a solver since issue 15 (tests/test_custom_solvers.py).
@pytest.mark.parametrize("bad", [fi.CG, "cg", 3, fi.Anderson()])
def test_linear_solve_solve_not_a_solver(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"linear_solve\(matvec, b, \*args\): solve must be"):
        fi.linear_solve(lambda v, a: a @ v, good_b(), A, solve=bad)


def test_linear_solve_matvec_not_callable() -> None:
    with pytest.raises(TypeError, match=r"linear_solve.*matvec must be callable"):
        fi.linear_solve(A, good_b())  # type: ignore[arg-type]


def test_linear_solve_solver_is_keyword_only() -> None:
    """A solver passed positionally lands in ``args``: matvec then gets an unexpected argument."""
    with pytest.raises(TypeError):
        fi.linear_solve(lambda v, a: a @ v, good_b(), A, fi.CG())


# --------------------------------------------------------------------------------------------
# User tensors are never modified in place


def snapshot(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def assert_unchanged(before: list[torch.Tensor], *after: torch.Tensor) -> None:
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new.detach(), old, rtol=0, atol=0)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_inputs_not_modified_by_solvers(entry: Entry) -> None:
    if entry.name == "Neumann":
        a = contraction(N, 0.5, 1)
    else:
        a = spd(N, 10.0, 1) if entry.symmetric_only else nonsymmetric(N, 10.0, 1)
    b = rhs(N, 1)
    init = torch.ones(N, dtype=F64)
    tree_b = {"u": b[:2].clone(), "w": b[2:].clone()}
    before = snapshot(a, b, init, tree_b["u"], tree_b["w"])
    entry.solver.run(lambda v: a @ v, b, init=init)
    entry.solver(lambda v: a @ v, b)
    entry.solver.run(
        lambda v: {
            "u": (a @ torch.cat([v["u"], v["w"]]))[:2],
            "w": (a @ torch.cat([v["u"], v["w"]]))[2:],
        },
        tree_b,
    )
    assert_unchanged(before, a, b, init, tree_b["u"], tree_b["w"])


@pytest.mark.parametrize(
    "solver",
    [fi.GMRES(), fi.CG(), fi.LU(), fi.NormalCG(), fi.BiCGStab()],
    ids=lambda s: type(s).__name__,
)
def test_inputs_not_modified_by_linear_solve(solver: Any) -> None:
    a = spd(N, 10.0, 2).requires_grad_()
    b = rhs(N, 2).requires_grad_()
    init = torch.zeros(N, dtype=F64)
    before = snapshot(a, b, init)
    x = fi.linear_solve(lambda v, m: m @ v, b, a, solve=solver, init=init)
    x.square().sum().backward()  # type: ignore[no-untyped-call]
    torch.func.jacrev(lambda m, c: fi.linear_solve(lambda v, k: k @ v, c, m, solve=solver), (0, 1))(
        a.detach(), b.detach()
    )
    torch.func.jvp(
        lambda m: fi.linear_solve(lambda v, k: k @ v, b.detach(), m, solve=solver),
        (a.detach(),),
        (torch.ones_like(a),),
    )
    assert_unchanged(before, a, b, init)


def test_solution_is_not_an_input() -> None:
    """With ``init`` already the solution, the returned tensor is a new tensor, not ``init``."""
    b = good_b()
    init = torch.linalg.solve(A, b)
    x = fi.linear_solve(lambda v, m: m @ v, b, A, solve=fi.CG(), init=init)
    assert x is not init
    x.add_(1.0)  # writing into the result leaves the user's init alone
    torch.testing.assert_close(init, torch.linalg.solve(A, b), rtol=0, atol=0)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_solution_does_not_alias_b(entry: Entry) -> None:
    """At ``b = 0`` (no iteration) the solution is a new tensor the caller may write into."""
    b = torch.zeros(N, dtype=F64)
    before = snapshot(b)
    x = entry.solver(lambda v: 0.6 * v, b)
    x.add_(1.0)
    assert_unchanged(before, b)


@pytest.mark.parametrize("entry", SOLVERS, ids=SOLVER_IDS)
def test_solution_does_not_alias_init(entry: Entry) -> None:
    """With ``init`` already the solution (no iteration taken), writing into the returned
    solution must not change the caller's ``init``."""
    b = torch.ones(N, dtype=F64)
    init = b / 0.6
    before = snapshot(b, init)
    for x in (
        entry.solver(lambda v: 0.6 * v, b, init=init),
        entry.solver.run(lambda v: 0.6 * v, b, init=init).solution,
    ):
        x.add_(1.0)
        assert_unchanged(before, b, init)

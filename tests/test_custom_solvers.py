"""``solve=`` takes a callable ``solve(matvec, b) -> x`` or any ``fi.LinearSolver`` (issue 15).

Every entry point coerces ``solve=`` through one function, ``as_linear_solver``: library solvers
pass unchanged, a callable or protocol object is wrapped in an adapter that judges the answer by
its true residual, so a wrong user solver is reported like a library solver that failed.
References: dense float64 ``torch.linalg.solve`` and closed forms; ``gradcheck``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pytest
import torch

import funcimplicit as fi
from funcimplicit._linear.adapter import CallableSolver, as_linear_solver
from funcimplicit._linear.base import finish

F64 = torch.float64
TreeT = TypeVar("TreeT", bound=fi.TensorTree)


def _spd(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    return m @ m.T + n * torch.eye(n, dtype=F64)


def _nonsym(n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=F64) + n * torch.eye(n, dtype=F64)


def cg_solve(matvec: Callable[[Any], Any], b: Any) -> Any:
    """A vmap-safe user solve written with a library solver."""
    return fi.CG()(matvec, b)


def dense_solve(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    """A vmap-safe user solve: materialize A with jacrev, then torch.linalg.solve."""
    matrix = torch.func.jacrev(matvec)(torch.zeros_like(b))
    x: torch.Tensor = torch.linalg.solve(matrix, b)
    return x


def gmres_with_init(matvec: Callable[[Any], Any], b: Any, init: Any = None) -> Any:
    """The JAXopt convention: an optional warm start."""
    return fi.GMRES()(matvec, b, init)


class Counting:
    """Follows ``fi.LinearSolver`` by delegation, and counts its runs."""

    def __init__(self, inner: Any, on_failure: str = "warn") -> None:
        self.inner = inner
        self.on_failure = on_failure
        self.failure_hint = "Counting: check the inner solver."
        self.runs = 0

    def __call__(self, matvec: Any, b: Any, init: Any = None) -> Any:
        return self.run(matvec, b, init).solution

    def run(self, matvec: Any, b: Any, init: Any = None) -> fi.LinearSolveResult[Any]:
        self.runs += 1
        result: fi.LinearSolveResult[Any] = self.inner.run(matvec, b, init)
        return result


USER_SOLVES = [cg_solve, dense_solve, gmres_with_init]


# ----------------------------------------------------------------------------- coercion


def test_library_solvers_pass_unchanged() -> None:
    for solver in (fi.CG(), fi.GMRES(restart=3), fi.LU(), fi.NormalCG(), fi.Neumann()):
        assert as_linear_solver(solver, "call") is solver
    assert isinstance(as_linear_solver(None, "call"), fi.Auto)  # the default (was GMRES)
    assert isinstance(as_linear_solver(cg_solve, "call"), CallableSolver)
    adapter = as_linear_solver(Counting(fi.CG(), on_failure="raise"), "call")
    assert isinstance(adapter, CallableSolver)
    assert adapter.on_failure == "raise"  # taken from the protocol object


@pytest.mark.parametrize(
    ("bad", "received"),
    [(3, "int"), ("cg", "str"), (fi.CG, "the class CG"), (fi.Anderson(), "Anderson")],
)
def test_not_a_solver_names_call_expected_received_fix(bad: Any, received: str) -> None:
    with pytest.raises(TypeError) as info:
        fi.linear_solve(lambda v: 2 * v, torch.ones(2, dtype=F64), solve=bad)
    message = str(info.value)
    assert message.startswith("linear_solve(matvec, b, *args): solve must be a linear solver")
    assert "callable solve(matvec, b) -> x" in message  # expected
    assert received in message  # received
    assert "fi.GMRES()" in message or "CG()" in message  # the fix


def test_protocol_object_with_bad_on_failure_is_refused() -> None:
    with pytest.raises(ValueError, match=r"call: solve\.on_failure must be one of"):
        as_linear_solver(Counting(fi.CG(), on_failure="loud"), "call")


# ----------------------------------------------------------------------- linear_solve


@pytest.mark.parametrize("user_solve", USER_SOLVES)
def test_linear_solve_values_and_gradients(user_solve: Any) -> None:
    a, b = _nonsym(), torch.linspace(1.0, 2.0, 4, dtype=F64)
    a_ref = a.clone().requires_grad_()
    b_ref = b.clone().requires_grad_()
    x_ref = torch.linalg.solve(a_ref, b_ref)
    g_a, g_b = torch.autograd.grad(x_ref.square().sum(), (a_ref, b_ref))

    solve = fi.LU() if user_solve is cg_solve else user_solve  # CG needs SPD: see below
    a_ = a.clone().requires_grad_()
    b_ = b.clone().requires_grad_()
    x = fi.linear_solve(lambda v, m: m @ v, b_, a_, solve=solve)
    torch.testing.assert_close(x, x_ref.detach(), rtol=1e-9, atol=1e-12)
    grads = torch.autograd.grad(x.square().sum(), (a_, b_))
    torch.testing.assert_close(grads[0], g_a, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads[1], g_b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("user_solve", USER_SOLVES)
def test_linear_solve_under_func_transforms(user_solve: Any) -> None:
    """jacrev vmaps the backward solve, so the user solve runs under vmap there."""
    a = _spd()
    bs = torch.stack([torch.linspace(1.0, 2.0, 4, dtype=F64) * k for k in (1.0, -2.0, 0.5)])

    def f(b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(lambda v, m: m @ v, b, m, solve=user_solve)

    inv = torch.linalg.inv(a)
    torch.testing.assert_close(torch.func.jacrev(f)(bs[0], a), inv, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(torch.func.jacfwd(f)(bs[0], a), inv, rtol=1e-8, atol=1e-10)
    # per-task gradient in the matrix: d(1^T A^{-1} b)/dA = -A^{-T} 1 x^T
    grads = torch.func.vmap(torch.func.grad(lambda b, m: f(b, m).sum(), argnums=1), (0, None))(
        bs, a
    )
    ones = torch.ones(4, dtype=F64)
    for b, g in zip(bs, grads, strict=True):
        expected = -torch.outer(torch.linalg.solve(a.T, ones), torch.linalg.solve(a, b))
        torch.testing.assert_close(g, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("user_solve", [cg_solve, dense_solve])
def test_linear_solve_gradcheck(user_solve: Any) -> None:
    # CG needs a symmetric operator also at gradcheck's perturbed points: A = (M + M^T) / 2
    a = _spd(3).requires_grad_()
    b = torch.tensor([1.0, -1.0, 2.0], dtype=F64, requires_grad=True)

    def f(b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(lambda v, m: 0.5 * (m + m.T) @ v, b, m, solve=user_solve)

    assert torch.autograd.gradcheck(f, (b, a))
    assert torch.autograd.gradgradcheck(f, (b, a))


def test_pytree_right_hand_side_with_user_solve() -> None:
    a = _spd(3)

    def matvec(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flat = torch.cat([v["x"], v["y"].reshape(1)])
        out = a @ flat
        return {"x": out[:2], "y": out[2]}

    b = {"x": torch.tensor([1.0, 2.0], dtype=F64), "y": torch.tensor(3.0, dtype=F64)}
    x = fi.linear_solve(matvec, b, solve=cg_solve)
    ref = torch.linalg.solve(a, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    torch.testing.assert_close(torch.cat([x["x"], x["y"].reshape(1)]), ref)


def test_protocol_object_is_run() -> None:
    counting = Counting(fi.GMRES())
    a, b = _nonsym(), torch.ones(4, dtype=F64)
    x = fi.linear_solve(lambda v: a @ v, b, solve=counting)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    assert counting.runs == 1


# ------------------------------------------------------------------ failures are reported


def test_wrong_user_solve_warns_with_residual() -> None:
    a, b = _nonsym(), torch.ones(4, dtype=F64)
    with pytest.warns(fi.ConvergenceWarning, match=r"did not converge.*residual norm"):
        fi.linear_solve(lambda v: a @ v, b, solve=lambda matvec, b: b)


def test_wrong_protocol_verdict_is_checked() -> None:
    """A protocol object that claims convergence for a wrong answer is caught."""

    class Liar(Counting):
        def run(self, matvec: Any, b: Any, init: Any = None) -> fi.LinearSolveResult[Any]:
            zero = torch.zeros((), dtype=F64)
            return fi.LinearSolveResult(
                b, torch.ones((), dtype=torch.int64), zero, zero + 1e-8, torch.tensor(True)
            )

    a, b = _nonsym(), torch.ones(4, dtype=F64)
    with pytest.raises(fi.ConvergenceError, match="did not converge"):
        fi.linear_solve(lambda v: a @ v, b, solve=Liar(fi.CG(), on_failure="raise"))


def test_protocol_object_own_failure_counts() -> None:
    """The object's own non-convergence is reported even if its answer looks fine."""
    a, b = _spd(), torch.ones(4, dtype=F64)
    inner = fi.CG(maxiter=1, on_failure="ignore")
    with pytest.warns(fi.ConvergenceWarning, match="did not converge"):
        fi.linear_solve(lambda v: a @ v, b, solve=Counting(inner))


def test_non_vmap_safe_user_solve_is_explained() -> None:
    def branchy(matvec: Any, b: torch.Tensor) -> torch.Tensor:
        if float(b.sum()) > 1e300:  # reads a tensor value: not vmap-safe
            return b
        return dense_solve(matvec, b)

    a, b = _spd(), torch.ones(4, dtype=F64)
    x = fi.linear_solve(lambda v, m: m @ v, b, a, solve=branchy)  # eager: fine
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    with pytest.raises(RuntimeError, match=r"branchy.*vmap-safe"):
        torch.func.jacrev(lambda m: fi.linear_solve(lambda v, m: m @ v, b, m, solve=branchy))(a)


# -------------------------------------------------------------------- every entry point


def _ridge_optimality(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
    return x.T @ (x @ w - y) + lam * w


def _ridge_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(3)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    y = torch.randn(6, generator=g, dtype=F64)
    return torch.tensor(0.7, dtype=F64), x, y


def _ridge_reference(lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w: torch.Tensor = torch.linalg.solve(x.T @ x + lam * torch.eye(3, dtype=F64), x.T @ y)
    return w


def _ridge_grad_reference() -> torch.Tensor:
    lam, x, y = _ridge_data()
    lam = lam.clone().requires_grad_()
    (g,) = torch.autograd.grad(_ridge_reference(lam, x, y).sum(), lam)
    return g


@pytest.mark.parametrize("user_solve", [cg_solve, dense_solve, Counting(fi.CG())])
def test_implicit_root_and_fixed_point(user_solve: Any) -> None:
    lam, x, y = _ridge_data()

    @fi.implicit_root(_ridge_optimality, solve=user_solve)
    def ridge(init: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
        return _ridge_reference(lam, x, y).detach()

    g = torch.func.grad(lambda lam: ridge(torch.zeros(3, dtype=F64), lam, x, y).sum())(lam)
    torch.testing.assert_close(g, _ridge_grad_reference(), rtol=1e-8, atol=1e-10)

    step = 0.05  # w = w - step * T(w): a contraction with the same fixed point

    @fi.fixed_point(lambda w, lam: w - step * _ridge_optimality(w, lam, x, y), solve=user_solve)
    def ridge_fp(init: torch.Tensor, lam: torch.Tensor) -> Any:
        return _ridge_reference(lam, x, y).detach()

    g = torch.func.grad(lambda lam: ridge_fp(torch.zeros(3, dtype=F64), lam).sum())(lam)
    torch.testing.assert_close(g, _ridge_grad_reference(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("user_solve", [cg_solve, dense_solve])
def test_root_vjp_root_jvp_hypergradient(user_solve: Any) -> None:
    lam, x, y = _ridge_data()
    w = _ridge_reference(lam, x, y)
    expected = _ridge_grad_reference()
    ones = torch.ones(3, dtype=F64)
    (g,) = fi.root_vjp(_ridge_optimality, w, (lam, x, y), ones, solve=user_solve)[:1]
    torch.testing.assert_close(g, expected, rtol=1e-8, atol=1e-10)
    tangents = (torch.ones((), dtype=F64), torch.zeros_like(x), torch.zeros_like(y))
    s = fi.root_jvp(_ridge_optimality, w, (lam, x, y), tangents, solve=user_solve)
    torch.testing.assert_close(s.sum(), expected, rtol=1e-8, atol=1e-10)
    result = fi.hypergradient(
        lambda w, lam, x, y: w.sum(), _ridge_optimality, w, lam, x, y, solve=user_solve
    )
    torch.testing.assert_close(result.grad, expected, rtol=1e-8, atol=1e-10)


def test_newton_inner_linear_solver() -> None:
    a = torch.tensor([8.0, 27.0], dtype=F64)
    method = fi.Newton(solve=dense_solve)  # type: ignore[arg-type]
    assert isinstance(method.solve, CallableSolver)
    solution = fi.solve_root(lambda x, a: x**3 - a, torch.ones(2, dtype=F64), a, method=method)
    torch.testing.assert_close(solution.value, torch.tensor([2.0, 3.0], dtype=F64))
    solution = fi.solve_root(
        lambda x, a: x**3 - a, torch.ones(2, dtype=F64), a, method=fi.Newton(), solve=cg_solve
    )
    torch.testing.assert_close(solution.value, torch.tensor([2.0, 3.0], dtype=F64))


def test_nn_class_keyword_and_attribute() -> None:
    lam_value, x, y = _ridge_data()

    class Ridge(fi.nn.ImplicitMetaGradientModule, solve=cg_solve):
        def __init__(self, lam: torch.Tensor) -> None:
            super().__init__()
            self.lam = lam
            self.w = torch.nn.Parameter(torch.zeros(3, dtype=F64))

        def objective(self) -> torch.Tensor:
            return 0.5 * ((x @ self.w - y) ** 2).sum() + 0.5 * self.lam * self.w @ self.w

        def solve(self) -> None:
            with torch.no_grad():
                self.w.copy_(_ridge_reference(self.lam, x, y))

    assert isinstance(Ridge.linear_solver, CallableSolver)
    lam = lam_value.clone().requires_grad_()
    model = Ridge(lam)
    model.solve()
    model.w.sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(lam.grad, _ridge_grad_reference(), rtol=1e-8, atol=1e-10)

    model.linear_solver = dense_solve  # type: ignore[assignment]
    assert isinstance(model.linear_solver, CallableSolver)
    with pytest.raises(TypeError, match=r"Ridge\.linear_solver = \.\.\.: solve must be"):
        model.linear_solver = 3  # type: ignore[assignment]


def test_warm_start_reaches_a_solver_that_accepts_init() -> None:
    seen: list[Any] = []

    def with_init(matvec: Any, b: torch.Tensor, init: Any = None) -> torch.Tensor:
        seen.append(init)
        return dense_solve(matvec, b)

    a, b = _spd(), torch.ones(4, dtype=F64)
    start = torch.full((4,), 0.1, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fi.linear_solve(lambda v: a @ v, b, solve=with_init, init=start)
    assert seen[0] is not None
    torch.testing.assert_close(seen[0], start)


# --- A solver of one's own on the exported base (issue 16) -----------------------------------


@dataclass(frozen=True, kw_only=True)
class Jacobi(fi.IterativeSolver):
    """Jacobi iteration ``x <- x + D^{-1} (b - A x)`` for a diagonally dominant ``A``."""

    diagonal: torch.Tensor

    def compute(self, operator: Any, b: Any, init: Any, tolerance: torch.Tensor) -> Any:
        x = torch.zeros_like(b) if init is None else init
        residual, iterations = torch.linalg.vector_norm(b - operator(x)), 0
        while iterations < self._maxiter(b) and not bool(residual <= tolerance):  # eager only
            x = x + (b - operator(x)) / self.diagonal
            residual, iterations = torch.linalg.vector_norm(b - operator(x)), iterations + 1
        return finish(x, torch.tensor(iterations), residual, tolerance)


def test_a_subclass_of_the_exported_base_is_a_library_solver() -> None:
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 5.0, 1.0], [0.0, 1.0, 3.0]], dtype=F64)
    jacobi = Jacobi(diagonal=torch.diagonal(a))
    assert as_linear_solver(jacobi, "test") is jacobi  # not wrapped in the adapter
    assert not Jacobi.requires_symmetric
    assert Jacobi.applies_operator_only
    b = torch.tensor([1.0, 2.0, 3.0], dtype=F64, requires_grad=True)
    x = fi.linear_solve(lambda v: a @ v, b, solve=jacobi)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    (g,) = torch.autograd.grad(x.sum(), b)
    torch.testing.assert_close(g, torch.linalg.solve(a.T, torch.ones(3, dtype=F64)))
    result = jacobi.run(lambda v: a @ v, b.detach())
    assert int(result.status) == fi.Status.CONVERGED


class Picard:
    """An inner method following the fi.InnerSolver protocol, with no library base class."""

    on_failure: Literal["warn", "raise", "ignore"] = "raise"
    failure_hint = ""

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        return 1e-12, 1e-12

    def run(self, problem: fi.InnerProblem, init: TreeT) -> fi.Solution[TreeT]:
        x = init
        for _ in range(200):
            x = problem.fixed_point(x)
        residual = torch.linalg.vector_norm(problem.root(x))  # one tensor here
        tolerance = problem.tolerance(x)
        return fi.Solution(x, torch.tensor(200), residual, tolerance, residual <= tolerance)


def test_an_inner_solver_protocol_object_is_accepted() -> None:
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    sol = fi.solve_fixed_point(
        lambda x, t: t * torch.cos(x), torch.zeros((), dtype=F64), theta, method=Picard()
    )
    assert int(sol.status) == fi.Status.CONVERGED
    (g,) = torch.autograd.grad(sol.value, theta)
    x = sol.value.detach()  # x = t cos x:  dx/dt = cos x / (1 + t sin x)
    torch.testing.assert_close(g, torch.cos(x) / (1 + theta.detach() * torch.sin(x)))
    with pytest.raises(TypeError, match=r"fi\.InnerSolver"):
        fi.solve_fixed_point(lambda x: x, torch.zeros(()), method=object())  # type: ignore[arg-type]

"""Inner solvers (``solve_fixed_point``, ``solve_root``, ``minimize``) against references.

Every value is compared with a reference computed without the library: a high-precision scalar
Newton iteration (mpmath), a dense float64 ``torch.linalg.solve``, a closed form, or a solution
planted in the problem's construction. The statistics of the returned :class:`fi.Solution` are
checked against a residual recomputed here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import inner_methods
import mpmath  # type: ignore[import-untyped]
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcimplicit as fi

F64 = torch.float64
F32 = torch.float32


# Tiny problems: one intra-op thread (the shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def affine_contraction(n: int, radius: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J, c)`` with ``J`` non-symmetric of spectral radius ``radius``."""
    g = torch.randn(n, n, dtype=F64, generator=_gen(seed))
    rho = torch.linalg.eigvals(g).abs().max()
    c = torch.randn(n, dtype=F64, generator=_gen(seed + 1000))
    return radius * g / rho, c


def affine(x: torch.Tensor, J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return J @ x + c


def affine_reference(J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    solution: torch.Tensor = torch.linalg.solve(torch.eye(J.shape[0], dtype=F64) - J, c)
    return solution


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().to(F64), ref.detach().to(F64)
    return float(
        torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300)
    )


def assert_consistent(sol: fi.Solution[Any], residual: Callable[[Any], Any], rtol: float) -> None:
    """The statistics of a converged solution agree with a residual recomputed here."""
    leaves = [torch.as_tensor(v) for v in _leaves(sol.value)]
    r = _leaves(residual(sol.value))
    r_norm = torch.sqrt(sum((v.detach().to(F64) ** 2).sum() for v in r))  # type: ignore[arg-type]
    x_norm = torch.sqrt(sum((v.detach().to(F64) ** 2).sum() for v in leaves))  # type: ignore[arg-type]
    assert sol.iterations.dtype == torch.int64
    assert sol.status.dtype == torch.int64
    assert bool(sol.converged)
    assert int(sol.status) == fi.Status.CONVERGED
    assert float(sol.residual_norm) <= float(sol.tolerance)
    assert math.isclose(float(sol.residual_norm), float(r_norm), rel_tol=1e-3, abs_tol=1e-13)
    # tolerance = max(atol, rtol * ||x||) with the defaults atol = rtol
    assert math.isclose(float(sol.tolerance), max(rtol, rtol * float(x_norm)), rel_tol=1e-6)


def _leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in _leaves(tree[k])]
    if isinstance(tree, list | tuple):
        return [v for item in tree for v in _leaves(item)]
    return [tree]


# --------------------------------------------------------------------------------------------
# x = cos(x) + theta


def cos_map(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.cos(x) + theta


def cos_fixed_point_reference(theta: float) -> float:
    """``x* = cos(x*) + theta`` by Newton's method on ``x - cos x - theta`` at 50 digits."""
    with mpmath.workdps(50):
        t = mpmath.mpf(theta)
        x = mpmath.mpf(0.5) + t
        for _ in range(200):
            step = (x - mpmath.cos(x) - t) / (1 + mpmath.sin(x))
            x -= step
            if abs(step) < mpmath.mpf(10) ** -45:
                break
        assert abs(x - mpmath.cos(x) - t) < mpmath.mpf(10) ** -40
        return float(x)


FIXED_POINT_METHODS = inner_methods.methods("fixed_point")


@pytest.mark.parametrize("name", list(FIXED_POINT_METHODS))
@settings(max_examples=4)
@given(theta=st.floats(-0.8, 0.8))
def test_cos_fixed_point(name: str, theta: float) -> None:
    method = FIXED_POINT_METHODS[name]
    t = torch.tensor(theta, dtype=F64)
    sol = fi.solve_fixed_point(cos_map, torch.zeros((), dtype=F64), t, method=method)
    ref = cos_fixed_point_reference(theta)
    # residual <= 1e-10 (1 + |x|) and |d(x - cos x)/dx| = 1 + sin x >= 1 - sin(1.6): error <~ 1e-9
    assert abs(float(sol.value) - ref) <= 1e-8
    assert sol.value.shape == ()
    assert_consistent(sol, lambda x: cos_map(x, t) - x, 1e-10)


def test_cos_fixed_point_iteration_count_ordering() -> None:
    """Anderson, Broyden and Newton need far fewer evaluations than the plain iteration
    (rate |sin x*| ~ 0.85 at theta = 0.5)."""
    t = torch.tensor(0.5, dtype=F64)
    x0 = torch.zeros((), dtype=F64)
    its = {
        name: int(fi.solve_fixed_point(cos_map, x0, t, method=m).iterations)
        for name, m in FIXED_POINT_METHODS.items()
        if name in ("FixedPointIteration", "Anderson", "Broyden", "Newton")
    }
    # plain iteration: about log(1e-10) / log(0.85) ~ 140 iterations
    assert 100 <= its["FixedPointIteration"] <= 200
    for name in ("Anderson", "Broyden", "Newton"):
        assert its[name] <= 20, its


def test_float32_cos_fixed_point() -> None:
    t = torch.tensor(0.3, dtype=F32)
    for method in (fi.Anderson(), fi.Broyden(), fi.Newton(), fi.FixedPointIteration(maxiter=500)):
        sol = fi.solve_fixed_point(cos_map, torch.zeros((), dtype=F32), t, method=method)
        assert sol.value.dtype == F32
        assert sol.residual_norm.dtype == F32
        assert bool(sol.converged)
        # default float32 tolerance 1e-5 (relative), amplified by 1 / (1 + sin x*) <= 1
        assert abs(float(sol.value) - cos_fixed_point_reference(0.3)) <= 3e-5


# --------------------------------------------------------------------------------------------
# Affine contractions x = J x + c


AFFINE_CASES = [
    # (radius, method id, method); the plain iteration needs log(1e-10)/log(radius) iterations
    # (plus a transient: J is far from normal), so at 0.99 only the accelerated methods run.
    (0.5, "FixedPointIteration", fi.FixedPointIteration(maxiter=500)),
    (0.9, "FixedPointIteration", fi.FixedPointIteration(maxiter=2000)),
    (0.5, "Anderson", fi.Anderson(maxiter=500)),
    (0.9, "Anderson", fi.Anderson(maxiter=500)),
    (0.99, "Anderson", fi.Anderson(maxiter=500)),
    (0.99, "Anderson_h20", fi.Anderson(history=20, maxiter=500)),
    # limited-memory Broyden with memory >= 2n behaves as full Broyden (finite termination on
    # linear problems); see test_errors for the diverging memory < n case
    (0.5, "Broyden", fi.Broyden(memory=50, maxiter=500)),
    (0.9, "Broyden", fi.Broyden(memory=50, maxiter=500)),
    (0.99, "Broyden", fi.Broyden(memory=50, maxiter=500)),
    (0.5, "Newton", fi.Newton()),
    (0.9, "Newton", fi.Newton()),
    (0.99, "Newton", fi.Newton()),
    (0.99, "Newton_LU", fi.Newton(solve=fi.LU())),
]


@pytest.mark.parametrize(
    ("radius", "name", "method"), AFFINE_CASES, ids=[f"{n}-{r}" for r, n, _ in AFFINE_CASES]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_affine_contraction(radius: float, name: str, method: fi.InnerMethod, seed: int) -> None:
    n = 20
    J, c = affine_contraction(n, radius, seed)
    ref = affine_reference(J, c)
    sol = fi.solve_fixed_point(affine, torch.zeros(n, dtype=F64), J, c, method=method)
    assert_consistent(sol, lambda x: affine(x, J, c) - x, 1e-10)
    # forward error <= cond(I - J) * relative residual; cond(I - J) <= ~1e3 at radius 0.99
    assert rel_err(sol.value, ref) <= 1e-10 / (1 - radius) * 10
    if name.startswith("Newton"):
        assert int(sol.iterations) == 1  # one exact Newton step solves a linear problem
    if name == "FixedPointIteration":
        assert int(sol.iterations) >= math.log(1e-10) / math.log(radius) * 0.5


def test_affine_anderson_and_newton_beat_plain_iteration_at_radius_099() -> None:
    J, c = affine_contraction(20, 0.99, 0)
    x0 = torch.zeros(20, dtype=F64)
    plain = fi.solve_fixed_point(
        affine, x0, J, c, method=fi.FixedPointIteration(maxiter=20, on_failure="ignore")
    )
    assert int(plain.status) == fi.Status.MAX_ITERATIONS
    assert int(plain.iterations) == 20
    anderson = fi.solve_fixed_point(affine, x0, J, c, method=fi.Anderson(maxiter=500))
    assert int(anderson.iterations) < 200  # plain iteration: ~2300


def test_float32_affine_contraction() -> None:
    J, c = affine_contraction(30, 0.9, 3)
    ref = affine_reference(J, c)
    J32, c32 = J.to(F32), c.to(F32)
    for method in (fi.Anderson(), fi.Broyden(memory=60), fi.Newton()):
        sol = fi.solve_fixed_point(affine, torch.zeros(30, dtype=F32), J32, c32, method=method)
        assert sol.value.dtype == F32
        assert bool(sol.converged), type(method).__name__
        # relative residual 1e-5, cond(I - J) ~ 10-100
        assert rel_err(sol.value, ref) <= 1e-3


def test_custom_tolerances_are_respected() -> None:
    J, c = affine_contraction(20, 0.9, 0)
    x0 = torch.zeros(20, dtype=F64)
    loose = fi.solve_fixed_point(affine, x0, J, c, method=fi.FixedPointIteration(rtol=1e-3))
    tight = fi.solve_fixed_point(affine, x0, J, c, method=fi.FixedPointIteration(maxiter=2000))
    assert int(loose.iterations) < int(tight.iterations)
    x_norm = float(torch.linalg.vector_norm(loose.value))
    assert math.isclose(float(loose.tolerance), 1e-3 * x_norm, rel_tol=1e-9)
    residual = float(torch.linalg.vector_norm(affine(loose.value, J, c) - loose.value))
    assert residual <= 1e-3 * x_norm
    # atol dominates when it is larger than rtol * ||x||
    by_atol = fi.solve_fixed_point(
        affine, x0, J, c, method=fi.FixedPointIteration(rtol=0.0, atol=1e-2)
    )
    assert math.isclose(float(by_atol.tolerance), 1e-2)
    assert float(by_atol.residual_norm) <= 1e-2


# --------------------------------------------------------------------------------------------
# A pytree map with coupled leaves


SHAPES = {"a": (3,), "b": (2, 2), "c": ()}
SIZE = 3 + 4 + 1


def ravel_dict(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tree[k].reshape(-1) for k in ("a", "b", "c")])


def unravel_dict(vec: torch.Tensor) -> dict[str, torch.Tensor]:
    a, b, c = torch.split(vec, [3, 4, 1])
    return {"a": a, "b": b.reshape(2, 2), "c": c.reshape(())}


def dict_affine(x: dict[str, torch.Tensor], J: torch.Tensor, c: torch.Tensor) -> dict[str, Any]:
    """``x <- J x + c`` on the raveled dict, written leaf by leaf (every block of J couples)."""
    blocks = torch.split(J, [3, 4, 1], dim=0)
    out = {}
    for key, rows, shape, cs in zip(
        ("a", "b", "c"), blocks, SHAPES.values(), torch.split(c, [3, 4, 1]), strict=True
    ):
        cols = torch.split(rows, [3, 4, 1], dim=1)
        y = cols[0] @ x["a"] + cols[1] @ x["b"].reshape(-1) + cols[2][:, 0] * x["c"] + cs
        out[key] = y.reshape(shape)
    return out


def dict_nonlinear(x: dict[str, torch.Tensor], w: torch.Tensor, c: torch.Tensor) -> dict[str, Any]:
    """A coupled contraction: ``x <- tanh(W x + c)`` leaf by leaf (||W||_2 = 0.8)."""
    return unravel_dict(torch.tanh(w @ ravel_dict(x) + c))


def _dict_init() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s, dtype=F64) for k, s in SHAPES.items()}


@pytest.mark.parametrize(
    "method",
    [
        fi.FixedPointIteration(maxiter=1000),
        fi.Anderson(),
        fi.Broyden(),
        fi.Newton(),
        fi.Newton(solve=fi.LU()),
    ],
    ids=["FixedPointIteration", "Anderson", "Broyden", "Newton", "Newton_LU"],
)
def test_dict_affine_coupled(method: fi.InnerMethod) -> None:
    J, c = affine_contraction(SIZE, 0.8, 5)
    ref = affine_reference(J, c)
    sol = fi.solve_fixed_point(dict_affine, _dict_init(), J, c, method=method)
    assert set(sol.value) == {"a", "b", "c"}
    for key, shape in SHAPES.items():
        assert sol.value[key].shape == shape
    assert rel_err(ravel_dict(sol.value), ref) <= 1e-8
    assert bool(sol.converged)


@pytest.mark.parametrize(
    "method",
    [fi.FixedPointIteration(maxiter=1000), fi.Anderson(), fi.Broyden(), fi.Newton()],
    ids=["FixedPointIteration", "Anderson", "Broyden", "Newton"],
)
def test_dict_nonlinear_coupled(method: fi.InnerMethod) -> None:
    g = torch.randn(SIZE, SIZE, dtype=F64, generator=_gen(11))
    w = 0.8 * g / torch.linalg.matrix_norm(g, 2)
    c = torch.randn(SIZE, dtype=F64, generator=_gen(12))
    # reference: the plain iteration in torch, a contraction of rate <= 0.8, run to a fixed point
    ref = torch.zeros(SIZE, dtype=F64)
    for _ in range(400):
        ref = torch.tanh(w @ ref + c)
    assert float(torch.linalg.vector_norm(torch.tanh(w @ ref + c) - ref)) < 1e-15
    sol = fi.solve_fixed_point(dict_nonlinear, _dict_init(), w, c, method=method)
    assert rel_err(ravel_dict(sol.value), ref) <= 1e-9
    assert_consistent(
        sol,
        lambda x: {k: v - x[k] for k, v in dict_nonlinear(x, w, c).items()},
        1e-10,
    )


# --------------------------------------------------------------------------------------------
# A linear map that is not a contraction


def non_contractive() -> tuple[torch.Tensor, torch.Tensor]:
    """``M`` with eigenvalues -2, 3, -0.5, 1.5 (none is 1: a unique fixed point)."""
    m = torch.tensor(
        [[-2.0, 0.3, 0.0, 0.0], [0.0, 1.5, 0.2, 0.0], [0.0, 0.0, -0.5, 0.1], [0.1, 0.0, 0.0, 3.0]],
        dtype=F64,
    )
    return m, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)


def test_non_contractive_map_anderson_solves_plain_iteration_does_not() -> None:
    M, c = non_contractive()
    ref = affine_reference(M, c)
    x0 = torch.zeros(4, dtype=F64)
    # history > n: on a linear map Anderson is then equivalent to GMRES, which terminates
    sol = fi.solve_fixed_point(affine, x0, M, c, method=fi.Anderson(history=5))
    assert bool(sol.converged)
    assert rel_err(sol.value, ref) <= 1e-10
    with pytest.warns(fi.ConvergenceWarning, match="FixedPointIteration"):
        plain = fi.solve_fixed_point(affine, x0, M, c, method=fi.FixedPointIteration())
    assert int(plain.status) in (fi.Status.MAX_ITERATIONS, fi.Status.NONFINITE)
    assert not bool(plain.converged)
    # the plain iteration diverged: its "solution" is nowhere near the fixed point
    assert rel_err(plain.value, ref) > 1.0


@pytest.mark.parametrize("method", [fi.Broyden(), fi.Newton()], ids=["Broyden", "Newton"])
def test_non_contractive_map_root_methods(method: fi.InnerMethod) -> None:
    M, c = non_contractive()
    sol = fi.solve_fixed_point(affine, torch.zeros(4, dtype=F64), M, c, method=method)
    assert rel_err(sol.value, affine_reference(M, c)) <= 1e-10


# --------------------------------------------------------------------------------------------
# Newton and friends on root problems


def cube(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x**3 - a


@settings(max_examples=8)
@given(a=st.lists(st.floats(0.05, 100.0), min_size=1, max_size=5))
def test_newton_cube_root(a: list[float]) -> None:
    at = torch.tensor(a, dtype=F64)
    sol = fi.solve_root(cube, torch.ones_like(at), at)  # default method: Newton
    ref = torch.tensor([math.pow(v, 1.0 / 3.0) for v in a], dtype=F64)
    torch.testing.assert_close(sol.value, ref, rtol=1e-10, atol=1e-12)
    assert bool(sol.converged)
    assert int(sol.iterations) <= 50


@pytest.mark.parametrize(
    "method",
    [fi.Newton(backtracking=False), fi.Newton(solve=fi.LU()), fi.Newton(solve=fi.BiCGStab())],
    ids=["no_backtracking", "LU", "BiCGStab"],
)
def test_newton_cube_root_variants(method: fi.InnerMethod) -> None:
    a = torch.tensor([8.0, 27.0, 2.0, 0.5], dtype=F64)
    sol = fi.solve_root(cube, torch.full((4,), 1.5, dtype=F64), a, method=method)
    torch.testing.assert_close(sol.value, a ** (1.0 / 3.0), rtol=1e-10, atol=0.0)


def test_newton_quadratic_convergence_on_cube() -> None:
    """From a close start Newton converges quadratically: a handful of iterations."""
    a = torch.tensor(27.0, dtype=F64)
    sol = fi.solve_root(cube, torch.tensor(3.3, dtype=F64), a)
    assert int(sol.iterations) <= 5
    assert abs(float(sol.value) - 3.0) <= 1e-12


def coupled_system(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A x + 0.3 x^3 + sin(x) - b``: a coupled, monotone nonlinear system."""
    return A @ x + 0.3 * x**3 + torch.sin(x) - b


def _coupled_problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.randn(n, n, dtype=F64, generator=_gen(seed))
    A = g @ g.mT / n + torch.eye(n, dtype=F64) + 0.3 * (g - g.mT) / math.sqrt(n)
    x_true = torch.randn(n, dtype=F64, generator=_gen(seed + 1))
    b = A @ x_true + 0.3 * x_true**3 + torch.sin(x_true)  # the planted solution
    return A, b, x_true


@pytest.mark.parametrize(
    "method",
    [
        fi.Newton(),
        fi.Newton(solve=fi.LU()),
        fi.Newton(solve=fi.GMRES(restart=5, maxiter=500)),
        fi.Broyden(maxiter=300),
    ],
    ids=["Newton", "Newton_LU", "Newton_GMRES5", "Broyden"],
)
def test_coupled_nonlinear_system(method: fi.InnerMethod) -> None:
    A, b, x_true = _coupled_problem(10, 0)
    sol = fi.solve_root(coupled_system, torch.zeros(10, dtype=F64), A, b, method=method)
    assert rel_err(sol.value, x_true) <= 1e-9
    assert_consistent(sol, lambda x: coupled_system(x, A, b), 1e-10)


def test_coupled_system_pytree_root() -> None:
    """Root of a tuple-valued system whose leaves are coupled: x^2 + y - 11 = 0, x + y^2 - 7 = 0
    (Himmelblau's function; the root near (3, 2) is exactly (3, 2))."""

    def T(
        z: tuple[torch.Tensor, torch.Tensor], p: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = z
        return (x**2 + y - p[0], x + y**2 - p[1])

    p = torch.tensor([11.0, 7.0], dtype=F64)
    init = (torch.tensor(2.5, dtype=F64), torch.tensor(2.5, dtype=F64))
    sol = fi.solve_root(T, init, p)
    assert isinstance(sol.value, tuple)
    assert abs(float(sol.value[0]) - 3.0) <= 1e-12
    assert abs(float(sol.value[1]) - 2.0) <= 1e-12


@pytest.mark.parametrize(
    "method",
    [fi.Anderson(), fi.FixedPointIteration(damping=0.1, maxiter=2000)],
    ids=["Anderson", "FixedPointIteration"],
)
def test_fixed_point_methods_on_root_problem(method: fi.InnerMethod) -> None:
    """``solve_root`` with a fixed-point method iterates ``x - T(x)``."""
    a = torch.tensor([8.0, 27.0], dtype=F64)

    def T(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return 0.1 * (x**3 - a)  # x - T(x) is a contraction near the roots 2, 3 for damping 0.1

    sol = fi.solve_root(T, torch.tensor([2.2, 2.8], dtype=F64), a, method=method)
    torch.testing.assert_close(sol.value, torch.tensor([2.0, 3.0], dtype=F64), rtol=1e-8, atol=0.0)


# --------------------------------------------------------------------------------------------
# minimize


def ridge_loss(
    w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return 0.5 * ((X @ w - y) ** 2).sum() + 0.5 * lam * (w**2).sum()


def ridge_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.randn(n, d, dtype=F64, generator=_gen(seed))
    y = torch.randn(n, dtype=F64, generator=_gen(seed + 1))
    return X, y


def ridge_closed_form(lam: float, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = X.shape[1]
    solution: torch.Tensor = torch.linalg.solve(X.mT @ X + lam * torch.eye(d, dtype=F64), X.mT @ y)
    return solution


@pytest.mark.parametrize(
    "method",
    [
        None,
        fi.Newton(solve=fi.CG()),
        fi.Newton(solve=fi.Cholesky()),
        fi.GradientDescent(step_size=0.02, maxiter=5000),
        fi.GradientDescent(step_size=0.05, backtracking=True, maxiter=5000),
        fi.Anderson(),
    ],
    ids=["default", "NewtonCG", "NewtonCholesky", "GD", "GD_backtracking", "Anderson"],
)
@pytest.mark.parametrize("lam", [0.1, 3.0])
def test_minimize_ridge(method: fi.InnerMethod | None, lam: float) -> None:
    X, y = ridge_data(30, 8, 0)
    lam_t = torch.tensor(lam, dtype=F64)
    if isinstance(method, fi.Anderson):
        # a fixed-point method minimizes through x - grad L(x); scale the gradient so the map
        # is a contraction (||X||^2 ~ 60)
        def loss(
            w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            return ridge_loss(w, lam, X, y) / 100.0

        sol = fi.minimize(loss, torch.zeros(8, dtype=F64), lam_t, X, y, method=method)
    else:
        kwargs: dict[str, Any] = {} if method is None else {"method": method}
        sol = fi.minimize(ridge_loss, torch.zeros(8, dtype=F64), lam_t, X, y, **kwargs)
    ref = ridge_closed_form(lam, X, y)
    assert bool(sol.converged)
    assert rel_err(sol.value, ref) <= 1e-8
    # residual_norm is the gradient norm
    grad = X.mT @ (X @ sol.value - y) + lam * sol.value
    if not isinstance(method, fi.Anderson):
        assert math.isclose(
            float(sol.residual_norm),
            float(torch.linalg.vector_norm(grad)),
            rel_tol=1e-3,
            abs_tol=1e-12,
        )


def test_minimize_newton_is_one_step_on_a_quadratic() -> None:
    X, y = ridge_data(30, 8, 1)
    sol = fi.minimize(
        ridge_loss,
        torch.zeros(8, dtype=F64),
        torch.tensor(1.0, dtype=F64),
        X,
        y,
        method=fi.Newton(solve=fi.Cholesky()),
    )
    assert int(sol.iterations) == 1


def logistic_loss(
    w: torch.Tensor, lam: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    logits = X @ w
    return (
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * lam * (w**2).sum()
    )


def logistic_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.randn(n, d, dtype=F64, generator=_gen(seed))
    w_true = torch.randn(d, dtype=F64, generator=_gen(seed + 1))
    y = (torch.rand(n, dtype=F64, generator=_gen(seed + 2)) < torch.sigmoid(X @ w_true)).to(F64)
    return X, y


def logistic_reference(lam: float, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense Newton with the analytic gradient and Hessian (no autograd, no library)."""
    n, d = X.shape
    w = torch.zeros(d, dtype=F64)
    for _ in range(50):
        p = torch.sigmoid(X @ w)
        g = X.mT @ (p - y) / n + lam * w
        H = (X.mT * (p * (1 - p))) @ X / n + lam * torch.eye(d, dtype=F64)
        w = w - torch.linalg.solve(H, g)
        if float(torch.linalg.vector_norm(g)) < 1e-15:
            break
    return w


@pytest.mark.parametrize(
    "method",
    [
        None,
        fi.Newton(solve=fi.LU()),
        fi.GradientDescent(step_size=4.0, backtracking=True, maxiter=3000),
    ],
    ids=["NewtonCG", "NewtonLU", "GD_backtracking"],
)
def test_minimize_logistic(method: fi.InnerMethod | None) -> None:
    X, y = logistic_data(80, 5, 0)
    lam = 0.05
    kwargs: dict[str, Any] = {} if method is None else {"method": method}
    sol = fi.minimize(
        logistic_loss, torch.zeros(5, dtype=F64), torch.tensor(lam, dtype=F64), X, y, **kwargs
    )
    ref = logistic_reference(lam, X, y)
    assert bool(sol.converged)
    # the analytic gradient at the solution vanishes
    p = torch.sigmoid(X @ sol.value)
    grad = X.mT @ (p - y) / 80 + lam * sol.value
    assert float(torch.linalg.vector_norm(grad)) <= 1e-9
    assert rel_err(sol.value, ref) <= 1e-8


# --------------------------------------------------------------------------------------------
# Solution object


def test_solution_fields_and_start_at_solution() -> None:
    J, c = affine_contraction(10, 0.5, 0)
    ref = affine_reference(J, c)
    for method in (fi.FixedPointIteration(), fi.Anderson(), fi.Broyden(), fi.Newton()):
        sol = fi.solve_fixed_point(affine, ref.clone(), J, c, method=method)
        assert int(sol.iterations) == 0, type(method).__name__  # already converged at init
        assert int(sol.status) == fi.Status.CONVERGED
        torch.testing.assert_close(sol.value, ref, rtol=0.0, atol=0.0)
        for stat in (sol.iterations, sol.residual_norm, sol.tolerance, sol.converged, sol.status):
            assert stat.shape == ()
    # IntEnum members equal their ints (mypy's strict equality does not know it).
    assert fi.Status.CONVERGED == 0  # type: ignore[comparison-overlap]
    assert fi.Status.MAX_ITERATIONS == 1  # type: ignore[comparison-overlap]
    assert fi.Status.NONFINITE == 2  # type: ignore[comparison-overlap]


def test_init_and_args_are_not_modified() -> None:
    x0 = torch.zeros(3, dtype=F64)
    c = torch.ones(3, dtype=F64)
    sol = fi.solve_fixed_point(lambda x, c: 0.5 * x + c, x0, c)
    torch.testing.assert_close(x0, torch.zeros(3, dtype=F64))
    torch.testing.assert_close(c, torch.ones(3, dtype=F64))
    torch.testing.assert_close(sol.value, torch.full((3,), 2.0, dtype=F64))


def test_maxiter_one_counts_one_iteration() -> None:
    J, c = affine_contraction(10, 0.9, 0)
    sol = fi.solve_fixed_point(
        affine,
        torch.zeros(10, dtype=F64),
        J,
        c,
        method=fi.FixedPointIteration(maxiter=1, on_failure="ignore"),
    )
    assert int(sol.iterations) == 1
    torch.testing.assert_close(sol.value, c)  # one step from 0: J 0 + c
    assert int(sol.status) == fi.Status.MAX_ITERATIONS


def test_damping_is_the_documented_update() -> None:
    J, c = affine_contraction(6, 0.5, 2)
    x = torch.zeros(6, dtype=F64)
    for _ in range(3):
        x = 0.3 * x + 0.7 * (J @ x + c)
    sol = fi.solve_fixed_point(
        affine,
        torch.zeros(6, dtype=F64),
        J,
        c,
        method=fi.FixedPointIteration(damping=0.7, maxiter=3, on_failure="ignore"),
    )
    torch.testing.assert_close(sol.value, x, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
def test_broyden_default_memory_on_a_symmetric_contraction(seed: int) -> None:
    """Broyden with its default memory (20) on ``x = J x + c``, ``J`` symmetric with eigenvalues
    spread over [-0.9, 0.9] (a contraction in the 2-norm, n = 50): the plain iteration converges
    in ~200 iterations, and a quasi-Newton method must not do worse than diverge.
    With memory >= the iterations needed it converges in ~60, so what fails is the handling of
    a full memory (the oldest update is overwritten)."""
    n = 50
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=_gen(seed)))
    c = torch.randn(n, dtype=F64, generator=_gen(seed + 1))
    J = (q * (0.9 * torch.linspace(-1.0, 1.0, n, dtype=F64))) @ q.mT
    ref = affine_reference(J, c)
    sol = fi.solve_fixed_point(
        affine, torch.zeros(n, dtype=F64), J, c, method=fi.Broyden(maxiter=300, on_failure="ignore")
    )
    assert int(sol.status) == fi.Status.CONVERGED, (int(sol.status), int(sol.iterations))
    assert rel_err(sol.value, ref) <= 1e-8
    # for comparison, a memory that never fills: converges
    full = fi.solve_fixed_point(
        affine, torch.zeros(n, dtype=F64), J, c, method=fi.Broyden(memory=300)
    )
    assert rel_err(full.value, ref) <= 1e-8

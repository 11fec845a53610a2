"""Inner solvers never fail silently, and refuse bad input with messages that name the culprit.

Failures: a diverging iteration reports ``NONFINITE`` or ``MAX_ITERATIONS`` per element (and
warns, or raises in strict mode); a NaN-producing map reports ``NONFINITE``; a ``CONVERGED``
status is only ever given to a finite iterate that meets a finite tolerance. Bad input: invalid
method fields, a non-method ``method=``, a map whose output does not match ``init``, and a map
that captures a differentiable tensor each raise ``ValueError``/``TypeError``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import inner_methods
import pytest
import torch
from torch.func import vmap

import funcimplicit as fi

F64 = torch.float64


# Tiny problems: one intra-op thread (the shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def tenfold(x: torch.Tensor) -> torch.Tensor:
    return 10.0 * x


def scaled(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return r * x + 1.0


# One entry per method class of the table that solves fixed points (the errors are the class's).
ALL_METHODS = {type(m).__name__: type(m) for m in inner_methods.methods("fixed_point").values()}

NOT_CONVERGED = (int(fi.Status.MAX_ITERATIONS), int(fi.Status.NONFINITE))


# --------------------------------------------------------------------------------------------
# Divergence and non-finite maps


def test_divergence_plain_iteration_warns_and_reports() -> None:
    x0 = torch.ones(3, dtype=F64)
    with pytest.warns(
        fi.ConvergenceWarning, match=r"solve_fixed_point.*FixedPointIteration.*did not converge"
    ):
        sol = fi.solve_fixed_point(tenfold, x0, method=fi.FixedPointIteration())
    assert int(sol.status) in NOT_CONVERGED
    assert not bool(sol.converged)
    # 10^k overflows to inf near k = 308: either it stopped at maxiter with a finite value or
    # it stopped because the value (or its residual) is no longer finite
    if int(sol.status) == fi.Status.MAX_ITERATIONS:
        assert int(sol.iterations) == 100
        assert bool(torch.isfinite(sol.value).all())
        assert float(sol.residual_norm) > float(sol.tolerance)


def test_divergence_to_overflow_reports_nonfinite() -> None:
    x0 = torch.ones(3, dtype=F64)
    with pytest.warns(fi.ConvergenceWarning, match="NaN or Inf"):
        sol = fi.solve_fixed_point(tenfold, x0, method=fi.FixedPointIteration(maxiter=1000))
    assert int(sol.status) == fi.Status.NONFINITE
    assert int(sol.iterations) < 1000  # stops once non-finite, not at maxiter


@pytest.mark.parametrize("name", ["Anderson", "Broyden"])
def test_divergence_other_fixed_point_methods(name: str) -> None:
    """x <- 10 x has the fixed point 0; x <- 10 x + 1 has -1/9: Anderson and Broyden find it
    (it is linear), so they must not report failure there; the point is the status is honest."""
    method = ALL_METHODS[name]()
    sol = fi.solve_fixed_point(lambda x: 10.0 * x + 1.0, torch.ones(3, dtype=F64), method=method)
    if bool(sol.converged):
        torch.testing.assert_close(sol.value, torch.full((3,), -1.0 / 9.0, dtype=F64))
    else:
        assert int(sol.status) in NOT_CONVERGED


def test_divergence_per_element_under_vmap() -> None:
    radii = torch.tensor([0.5, 10.0, -0.5, 3.0], dtype=F64)
    x0 = torch.zeros((), dtype=F64)
    method = fi.FixedPointIteration(maxiter=200)
    with pytest.warns(fi.ConvergenceWarning, match="2 of 4 problems"):
        sol = vmap(lambda r: fi.solve_fixed_point(scaled, x0, r, method=method))(radii)
    assert sol.converged.tolist() == [True, False, True, False]
    assert int(sol.status[0]) == fi.Status.CONVERGED
    assert int(sol.status[2]) == fi.Status.CONVERGED
    assert int(sol.status[1]) in NOT_CONVERGED
    assert int(sol.status[3]) in NOT_CONVERGED
    torch.testing.assert_close(sol.value[0], torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(sol.value[2], torch.tensor(1.0 / 1.5, dtype=F64))
    # the converged elements stopped at their own iteration counts, unaffected by the others
    for i in (0, 2):
        single = fi.solve_fixed_point(scaled, x0, radii[i], method=method)
        assert int(sol.iterations[i]) == int(single.iterations)
        torch.testing.assert_close(sol.value[i], single.value, rtol=1e-12, atol=1e-12)


def nan_map(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x - 1.0)  # NaN for x < 1


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_nan_producing_map_reports_nonfinite(name: str) -> None:
    method = ALL_METHODS[name]()
    with pytest.warns(fi.ConvergenceWarning, match="NaN or Inf"):
        sol = fi.solve_fixed_point(nan_map, torch.zeros(3, dtype=F64), method=method)
    assert int(sol.status) == fi.Status.NONFINITE
    assert not bool(sol.converged)
    assert int(sol.iterations) <= 1


def test_nan_in_one_batch_element_only() -> None:
    def F(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.sqrt(a) + 0.5 * x  # NaN where a < 0

    a = torch.tensor([4.0, -1.0, 9.0], dtype=F64)
    with pytest.warns(fi.ConvergenceWarning, match="1 of 3 problems"):
        sol = vmap(lambda a: fi.solve_fixed_point(F, torch.zeros((), dtype=F64), a))(a)
    assert sol.status.tolist() == [fi.Status.CONVERGED, fi.Status.NONFINITE, fi.Status.CONVERGED]
    torch.testing.assert_close(sol.value[[0, 2]], torch.tensor([2.0, 3.0], dtype=F64))


def test_nan_in_minimize_objective() -> None:
    def L(w: torch.Tensor) -> torch.Tensor:
        return (torch.log(w) ** 2).sum()  # NaN gradient for w < 0

    with pytest.warns(fi.ConvergenceWarning):
        sol = fi.minimize(L, -torch.ones(2, dtype=F64))
    assert int(sol.status) == fi.Status.NONFINITE


# --------------------------------------------------------------------------------------------
# on_failure


@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_strict_mode_raises(name: str) -> None:
    method = ALL_METHODS[name](maxiter=2, on_failure="raise")
    # a slow contraction no method solves in 2 iterations (nonlinear: Newton needs more too)
    with pytest.raises(fi.ConvergenceError, match=rf"{name}.*did not converge.*after 2 iterations"):
        fi.solve_fixed_point(
            lambda x: torch.cos(x) + 0.5, torch.full((2,), 3.0, dtype=F64), method=method
        )


def test_strict_mode_raises_on_nonfinite() -> None:
    with pytest.raises(fi.ConvergenceError, match="NaN or Inf"):
        fi.solve_fixed_point(
            nan_map, torch.zeros(2, dtype=F64), method=fi.Anderson(on_failure="raise")
        )


def test_strict_mode_raises_under_vmap() -> None:
    method = fi.FixedPointIteration(maxiter=50, on_failure="raise")
    with pytest.raises(fi.ConvergenceError, match="1 of 2 problems"):
        vmap(lambda r: fi.solve_fixed_point(scaled, torch.zeros((), dtype=F64), r, method=method))(
            torch.tensor([0.5, 0.99], dtype=F64)
        )


def test_strict_mode_raises_for_minimize_and_solve_root() -> None:
    with pytest.raises(fi.ConvergenceError, match=r"minimize.*GradientDescent"):
        fi.minimize(
            lambda w: ((w - 1.0) ** 2).sum(),
            torch.zeros(2, dtype=F64),
            method=fi.GradientDescent(step_size=1e-3, maxiter=5, on_failure="raise"),
        )
    with pytest.raises(fi.ConvergenceError, match=r"solve_root.*Newton"):
        fi.solve_root(
            lambda x: x**2 + 1.0,  # no real root
            torch.ones(2, dtype=F64),
            method=fi.Newton(maxiter=5, on_failure="raise"),
        )


def test_ignore_mode_is_silent_but_reports_status() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = fi.solve_fixed_point(
            tenfold,
            torch.ones(2, dtype=F64),
            method=fi.FixedPointIteration(maxiter=5, on_failure="ignore"),
        )
    assert int(sol.status) == fi.Status.MAX_ITERATIONS
    assert int(sol.iterations) == 5
    torch.testing.assert_close(sol.value, torch.full((2,), 1e5, dtype=F64))


def test_warning_names_residual_and_iterations() -> None:
    with pytest.warns(fi.ConvergenceWarning) as record:
        fi.solve_fixed_point(
            lambda x: 0.99 * x + 1.0,
            torch.zeros(2, dtype=F64),
            method=fi.FixedPointIteration(maxiter=7),
        )
    message = str(record[0].message)
    assert "after 7 iterations" in message
    assert "residual norm" in message
    assert "tolerance" in message
    assert "maxiter" in message  # the hint


# --------------------------------------------------------------------------------------------
# CONVERGED is never given to a diverged iterate


def affine(x: torch.Tensor, J: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return J @ x + c


def _contraction(kind: str, n: int, radius: float, seed: int) -> tuple[torch.Tensor, ...]:
    """``(J, c)``: "nonnormal" (Ginibre scaled to the radius) or "symmetric" (eigenvalues
    spread over [-radius, radius])."""
    g = _gen(seed)
    if kind == "nonnormal":
        G = torch.randn(n, n, dtype=F64, generator=g)
        return radius * G / torch.linalg.eigvals(G).abs().max(), torch.randn(
            n, dtype=F64, generator=g
        )
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    c = torch.randn(n, dtype=F64, generator=g)
    return (q * (radius * torch.linspace(-1.0, 1.0, n, dtype=F64))) @ q.mT, c


@pytest.mark.parametrize(
    ("kind", "dtype", "radius", "seed"),
    [
        ("nonnormal", F64, 0.9, 0),
        ("nonnormal", F64, 0.99, 1),
        ("symmetric", F64, 0.9, 0),
        # float32: the diverging iterate reaches 1e18, ||x||^2 overflows, the tolerance
        # rtol * ||x|| becomes inf and the divergence was reported CONVERGED
        ("symmetric", torch.float32, 0.99, 3),
    ],
)
def test_converged_status_is_honest_for_limited_memory_broyden(
    kind: str, dtype: torch.dtype, radius: float, seed: int
) -> None:
    """Limited-memory Broyden (memory 20) may diverge on a linear contraction (n = 20); whatever
    happens, an element reported CONVERGED must be finite and near the fixed point."""
    n = 20
    J, c = _contraction(kind, n, radius, seed)
    ref = torch.linalg.solve(torch.eye(n, dtype=F64) - J, c)
    sol = fi.solve_fixed_point(
        affine,
        torch.zeros(n, dtype=dtype),
        J.to(dtype),
        c.to(dtype),
        method=fi.Broyden(maxiter=500, on_failure="ignore"),
    )
    if int(sol.status) == fi.Status.CONVERGED:
        assert bool(torch.isfinite(sol.value).all())
        assert bool(torch.isfinite(sol.tolerance)), "CONVERGED against an infinite tolerance"
        x = sol.value.to(F64)
        rel = float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))
        assert rel <= 1e-3, f"reported CONVERGED at relative error {rel:.3e}"
    else:
        assert int(sol.status) in NOT_CONVERGED


def test_tolerance_overflow_does_not_count_as_converged() -> None:
    """``||x||`` overflows (entries 1e155, squares 1e310) although ``x`` is finite: the
    tolerance ``rtol * ||x||`` must not become inf and accept any residual. Here F has no fixed
    point at all (a constant shift), the true relative residual is 1e-5 >> rtol = 1e-10."""
    x0 = torch.full((4,), 1e155, dtype=F64)

    def shift(x: torch.Tensor) -> torch.Tensor:
        return x - 1e150

    with pytest.warns(fi.ConvergenceWarning):
        sol = fi.solve_fixed_point(shift, x0, method=fi.FixedPointIteration(maxiter=3))
    assert not bool(sol.converged)
    assert int(sol.status) in NOT_CONVERGED


# --------------------------------------------------------------------------------------------
# Invalid method fields: ValueError/TypeError naming the class


INVALID_FIELDS: list[tuple[type[fi.InnerMethod], dict[str, Any], type[Exception], str]] = [
    (fi.Anderson, {"history": 0}, ValueError, "Anderson.*history"),
    (fi.Anderson, {"history": 2.5}, ValueError, "Anderson.*history"),
    (fi.Anderson, {"history": True}, ValueError, "Anderson.*history"),
    (fi.Anderson, {"mixing": 1.5}, ValueError, "Anderson.*mixing"),
    (fi.Anderson, {"mixing": 0.0}, ValueError, "Anderson.*mixing"),
    (fi.Anderson, {"regularization": -1.0}, ValueError, "Anderson.*regularization"),
    (fi.FixedPointIteration, {"damping": 0.0}, ValueError, "FixedPointIteration.*damping"),
    (fi.FixedPointIteration, {"damping": 1.5}, ValueError, "FixedPointIteration.*damping"),
    (fi.FixedPointIteration, {"damping": -0.5}, ValueError, "FixedPointIteration.*damping"),
    (fi.FixedPointIteration, {"damping": "half"}, ValueError, "FixedPointIteration.*damping"),
    (fi.Broyden, {"memory": 0}, ValueError, "Broyden.*memory"),
    (fi.Broyden, {"scale": 0.0}, ValueError, "Broyden.*scale"),
    (fi.Newton, {"solve": "cg"}, TypeError, "Newton.*solve"),
    (fi.Newton, {"solve": fi.Anderson()}, TypeError, "Newton.*solve"),
    (fi.Newton, {"max_backtracks": 0}, ValueError, "Newton.*max_backtracks"),
    (fi.GradientDescent, {"step_size": 0.0}, ValueError, "GradientDescent.*step_size"),
    (fi.GradientDescent, {"step_size": -1.0}, ValueError, "GradientDescent.*step_size"),
]
for _name, _cls in ALL_METHODS.items():
    INVALID_FIELDS += [
        (_cls, {"maxiter": 0}, ValueError, f"{_name}.*maxiter"),
        (_cls, {"maxiter": -3}, ValueError, f"{_name}.*maxiter"),
        (_cls, {"maxiter": 10.0}, ValueError, f"{_name}.*maxiter"),
        (_cls, {"on_failure": "bad"}, ValueError, f"{_name}.*on_failure"),
        (_cls, {"on_failure": "Warn"}, ValueError, f"{_name}.*on_failure"),
        (_cls, {"rtol": -1e-3}, ValueError, f"{_name}.*rtol"),
        (_cls, {"atol": -1.0}, ValueError, f"{_name}.*atol"),
        (_cls, {"rtol": "1e-6"}, ValueError, f"{_name}.*rtol"),
    ]


@pytest.mark.parametrize(
    ("cls", "fields", "error", "match"),
    INVALID_FIELDS,
    ids=[
        f"{c.__name__}-{next(iter(f))}={next(iter(f.values()))!r}" for c, f, _, _ in INVALID_FIELDS
    ],
)
def test_invalid_fields(
    cls: type, fields: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        cls(**fields)


@pytest.mark.parametrize("cls", list(ALL_METHODS.values()), ids=list(ALL_METHODS))
def test_methods_are_immutable_keyword_only_values(cls: type) -> None:
    method = cls(maxiter=7)
    assert method == cls(maxiter=7)
    assert isinstance(method, fi.InnerMethod)
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.maxiter = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        cls(1e-6)  # positional fields are refused
    assert dataclasses.replace(method, maxiter=9).maxiter == 9


def test_valid_edge_fields_are_accepted() -> None:
    fi.FixedPointIteration(damping=1.0)
    fi.FixedPointIteration(damping=1)
    fi.Anderson(history=1, mixing=1.0, regularization=0.0)
    fi.Broyden(memory=1, scale=-0.5)
    fi.Newton(solve=fi.CG(), backtracking=False, max_backtracks=1)
    fi.GradientDescent(step_size=3)
    fi.Anderson(rtol=0.0, atol=0.0, maxiter=1, on_failure="ignore")


# --------------------------------------------------------------------------------------------
# Bad calls


def half(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + 1.0


@pytest.mark.parametrize(
    "method",
    [fi.GMRES(), fi.CG(), "anderson", fi.Anderson, None.__class__],
    ids=["GMRES", "CG", "str", "class", "NoneType"],
)
def test_method_not_an_inner_method(method: Any) -> None:
    with pytest.raises(TypeError, match=r"solve_fixed_point.*method"):
        fi.solve_fixed_point(half, torch.zeros(2, dtype=F64), method=method)


def test_method_not_an_inner_method_in_root_and_minimize() -> None:
    with pytest.raises(TypeError, match=r"solve_root.*method.*GMRES"):
        fi.solve_root(half, torch.zeros(2, dtype=F64), method=fi.GMRES())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"minimize.*method.*CG"):
        fi.minimize(lambda w: (w**2).sum(), torch.zeros(2, dtype=F64), method=fi.CG())  # type: ignore[arg-type]


def test_solve_not_a_linear_solver() -> None:
    with pytest.raises(TypeError, match=r"solve_fixed_point.*solve.*Anderson"):
        fi.solve_fixed_point(half, torch.zeros(2, dtype=F64), solve=fi.Anderson())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"minimize.*solve"):
        fi.minimize(lambda w: (w**2).sum(), torch.zeros(2, dtype=F64), solve="cg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("F", "init", "error"),
    [
        (lambda x: {"a": x}, torch.zeros(2, dtype=F64), ValueError),
        (lambda x: (x, x), torch.zeros(2, dtype=F64), ValueError),
        (lambda x: x["a"], {"a": torch.zeros(2, dtype=F64)}, ValueError),
        (lambda x: {"b": x["a"]}, {"a": torch.zeros(2, dtype=F64)}, ValueError),
        (
            lambda x: {"a": x["a"]},
            {"a": torch.zeros(2, dtype=F64), "b": torch.zeros(1, dtype=F64)},
            ValueError,
        ),
        (lambda x: torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64), ValueError),
        (lambda x: x.sum(), torch.zeros(2, dtype=F64), ValueError),
        (lambda x: x.to(torch.float32), torch.zeros(2, dtype=F64), TypeError),
    ],
    ids=[
        "dict-vs-tensor",
        "tuple-vs-tensor",
        "tensor-vs-dict",
        "other-key",
        "missing-key",
        "shape",
        "scalar",
        "dtype",
    ],
)
@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_map_output_must_match_init(F: Any, init: Any, error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=r"solve_fixed_point.*(output|structure|shape|float)"):
        fi.solve_fixed_point(F, init, method=ALL_METHODS[name]())


@pytest.mark.parametrize(
    ("T", "error"),
    [
        (lambda x, a: (x - a, x), ValueError),
        (lambda x, a: (x - a).sum(), ValueError),  # would broadcast in x - T(x)
        (lambda x, a: (x - a).to(torch.float32), TypeError),  # would be promoted in x - T(x)
    ],
    ids=["tuple", "scalar", "dtype"],
)
@pytest.mark.parametrize("name", ["FixedPointIteration", "Anderson", "Broyden", "Newton"])
def test_root_output_must_match_init(T: Any, error: type[Exception], name: str) -> None:
    """Also for the fixed-point methods, which iterate ``x - T(x)``: the check must look at
    ``T``'s own output, before any arithmetic could broadcast or promote it."""
    with pytest.raises(error, match=r"solve_root.*(output|structure|shape|float)"):
        fi.solve_root(
            T,
            torch.zeros(2, dtype=F64),
            torch.ones(2, dtype=F64),
            method=ALL_METHODS[name](on_failure="ignore"),
        )


def test_minimize_objective_must_be_scalar() -> None:
    with pytest.raises(ValueError, match=r"minimize.*scalar"):
        fi.minimize(lambda w: w**2, torch.zeros(2, dtype=F64))


def _fixed_point_of_cos(theta: float) -> float:
    x = 0.0
    for _ in range(200):
        x = math.cos(x) + theta
    return x


def test_captured_requires_grad_tensor_gets_its_gradient() -> None:
    # Captured tensors used to be refused; the rule now differentiates what the callback reads.
    # x = cos(x) + theta: dx/dtheta = 1 / (1 + sin x); x - theta = 0: 1; (w - theta)^2: 1.
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    x = fi.solve_fixed_point(lambda x: torch.cos(x) + theta, torch.zeros((), dtype=F64)).value
    (g,) = torch.autograd.grad(x, theta)
    want = 1 / (1 + math.sin(_fixed_point_of_cos(0.5)))
    torch.testing.assert_close(g, torch.tensor(want, dtype=F64), rtol=1e-9, atol=1e-12)
    x = fi.solve_root(lambda x: x - theta, torch.zeros((), dtype=F64)).value
    torch.testing.assert_close(torch.autograd.grad(x, theta)[0], torch.ones((), dtype=F64))
    x = fi.minimize(lambda w: ((w - theta) ** 2).sum(), torch.zeros((), dtype=F64)).value
    torch.testing.assert_close(torch.autograd.grad(x, theta)[0], torch.ones((), dtype=F64))


def test_captured_tensor_under_a_transform_gets_its_gradient() -> None:
    def outer(theta: torch.Tensor) -> torch.Tensor:
        return fi.solve_fixed_point(
            lambda x: torch.cos(x) + theta, torch.zeros((), dtype=F64)
        ).value

    thetas = torch.tensor([0.5, 0.1], dtype=F64)
    got = vmap(torch.func.grad(outer))(thetas)
    want = torch.tensor(
        [1 / (1 + math.sin(_fixed_point_of_cos(float(t)))) for t in thetas], dtype=F64
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_captured_constant_tensor_is_allowed() -> None:
    theta = torch.tensor(0.5, dtype=F64)  # no grad: a constant
    sol = fi.solve_fixed_point(lambda x: torch.cos(x) + theta, torch.zeros((), dtype=F64))
    assert bool(sol.converged)


@pytest.mark.parametrize(
    ("init", "error", "match"),
    [
        (torch.zeros(2, dtype=torch.int64), TypeError, "floating"),
        ({}, ValueError, "at least one tensor"),
        ([1.0, 2.0], TypeError, "torch.Tensor"),
        (
            {"a": torch.zeros(2, dtype=F64), "b": torch.zeros(2, dtype=torch.float32)},
            TypeError,
            "dtype",
        ),
    ],
    ids=["int", "empty", "floats", "mixed-dtype"],
)
def test_bad_init(init: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=rf"solve_fixed_point.*{match}"):
        fi.solve_fixed_point(lambda x: x, init)

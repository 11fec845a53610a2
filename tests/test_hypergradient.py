"""``fi.hypergradient`` in eager mode: values against independent references, vmap, errors.

References: autograd through a dense float64 closed-form solve (ridge), central finite
differences of the outer loss with the inner problem re-solved to 1e-14 (logistic regression,
a nonlinear root), and a Python loop over tasks for ``vmap``. The compiled path is in
``test_compile.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.func import vmap

import funcimplicit as fi

F64 = torch.float64


def _ridge_data(seed: int = 0, n: int = 30, d: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    x, y = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64)
    xv, yv = torch.randn(20, d, generator=g, dtype=F64), torch.randn(20, generator=g, dtype=F64)
    return x, y, xv, yv


def stationarity(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
    # gradient of 0.5 ||X w - y||^2 + 0.5 w^T diag(lam) w
    return x.T @ (x @ w - y) + lam * w


def ridge_weights(lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w: torch.Tensor = torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ y)
    return w


def test_ridge_matches_autograd_through_the_dense_solve() -> None:
    x, y, xv, yv = _ridge_data()
    lam = torch.linspace(0.1, 2.0, 5, dtype=F64)

    def val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
        return ((xv @ w - yv) ** 2).mean() + 1e-2 * lam.square().sum()  # a direct term too

    out = fi.hypergradient(
        val_loss, stationarity, ridge_weights(lam, x, y), lam, x, y, solve=fi.CG(rtol=1e-13)
    )
    reference = torch.func.grad(lambda lam: val_loss(ridge_weights(lam, x, y), lam, x, y))(lam)
    torch.testing.assert_close(out.grad, reference, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out.value, val_loss(ridge_weights(lam, x, y), lam, x, y))
    assert bool(out.adjoint.converged)
    assert int(out.adjoint.iterations) <= 5


def test_argnums_tuple_keeps_the_callers_order() -> None:
    # d/dy as well: the hypergradient in data (as in dataset distillation).
    x, y, xv, yv = _ridge_data(seed=1)
    lam = torch.full((5,), 0.7, dtype=F64)

    def val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
        return ((xv @ w - yv) ** 2).mean()

    w = ridge_weights(lam, x, y)
    out = fi.hypergradient(val_loss, stationarity, w, lam, x, y, argnums=(3, 1))
    ref_y, ref_lam = torch.func.grad(
        lambda y, lam: val_loss(ridge_weights(lam, x, y), lam, x, y), argnums=(0, 1)
    )(y, lam)
    assert isinstance(out.grad, tuple)
    assert len(out.grad) == 2
    torch.testing.assert_close(out.grad[0], ref_y, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.grad[1], ref_lam, rtol=1e-9, atol=1e-12)


def _logistic_solution(
    c: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    # L2-regularized logistic regression solved by Newton's method to machine precision.
    def objective(p: dict[str, torch.Tensor]) -> torch.Tensor:
        z = x @ p["w"] + p["b"]
        return torch.nn.functional.softplus(-y * z).mean() + 0.5 * c * p["w"].square().sum()

    flat = torch.zeros(x.shape[1] + 1, dtype=F64)

    def objective_flat(v: torch.Tensor) -> torch.Tensor:
        return objective({"w": v[:-1], "b": v[-1]})

    for _ in range(30):
        g = torch.func.grad(objective_flat)(flat)
        h = torch.func.hessian(objective_flat)(flat)
        flat = flat - torch.linalg.solve(h, g)
    assert float(torch.func.grad(objective_flat)(flat).norm()) < 1e-14
    return {"w": flat[:-1], "b": flat[-1]}


def logistic_condition(
    p: dict[str, torch.Tensor], c: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> Any:
    def objective(p: dict[str, torch.Tensor]) -> torch.Tensor:
        z = x @ p["w"] + p["b"]
        return torch.nn.functional.softplus(-y * z).mean() + 0.5 * c * p["w"].square().sum()

    return torch.func.grad(objective)(p)


def test_nonlinear_pytree_root_matches_finite_differences() -> None:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=F64)
    y = torch.sign(x[:, 0] + 0.3 * torch.randn(40, generator=g, dtype=F64))
    xv = torch.randn(25, 3, generator=g, dtype=F64)
    yv = torch.sign(xv[:, 0])

    def outer(p: dict[str, torch.Tensor], c: torch.Tensor, x: torch.Tensor, y: Any) -> Any:
        return torch.nn.functional.softplus(-yv * (xv @ p["w"] + p["b"])).mean()

    c = torch.tensor(0.3, dtype=F64)
    out = fi.hypergradient(
        outer, logistic_condition, _logistic_solution(c, x, y), c, x, y, solve=fi.CG(rtol=1e-13)
    )
    h = 1e-5
    plus = outer(_logistic_solution(c + h, x, y), c, x, y)
    minus = outer(_logistic_solution(c - h, x, y), c, x, y)
    # central differences: truncation O(h^2) ~ 1e-10, rounding ~ eps / h ~ 1e-11
    torch.testing.assert_close(out.grad, (plus - minus) / (2 * h), rtol=1e-7, atol=1e-10)


def test_vmap_over_tasks_equals_a_loop() -> None:
    x, y, xv, yv = _ridge_data(seed=2)
    lams = (
        torch.rand(
            6,
            5,
            generator=torch.Generator(device=torch.get_default_device()).manual_seed(0),
            dtype=F64,
        )
        + 0.05
    )

    def meta_gradient(lam: torch.Tensor) -> torch.Tensor:
        def val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> Any:
            return ((xv @ w - yv) ** 2).mean()

        w = ridge_weights(lam, x, y)
        grad: torch.Tensor = fi.hypergradient(
            val_loss, stationarity, w, lam, x, y, solve=fi.CG(maxiter=10, rtol=1e-12)
        ).grad
        return grad

    batched = vmap(meta_gradient)(lams)
    looped = torch.stack([meta_gradient(lam) for lam in lams])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-14)


def test_inputs_are_not_modified() -> None:
    x, y, xv, yv = _ridge_data()
    lam = torch.ones(5, dtype=F64)
    w = ridge_weights(lam, x, y)
    before = [t.clone() for t in (w, lam, x, y)]

    def val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: Any) -> Any:
        return ((xv @ w - yv) ** 2).mean()

    fi.hypergradient(val_loss, stationarity, w, lam, x, y, solve=fi.CG())
    for t, b in zip((w, lam, x, y), before, strict=True):
        assert torch.equal(t, b)


def _val_loss(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Any:
    return (w**2).sum()


@pytest.mark.parametrize(
    ("argnums", "error", "match"),
    [
        (0, ValueError, "position 0, the solution"),
        (4, ValueError, "out of range"),
        ((1, 1), ValueError, "must not repeat"),
        (True, TypeError, "argnums must be ints"),
        ("1", TypeError, "argnums must be an int"),
    ],
)
def test_bad_argnums(argnums: Any, error: type[Exception], match: str) -> None:
    x, y, _, _ = _ridge_data()
    lam = torch.ones(5, dtype=F64)
    with pytest.raises(error, match=match):
        fi.hypergradient(
            _val_loss, stationarity, ridge_weights(lam, x, y), lam, x, y, argnums=argnums
        )


def test_bad_inputs_raise_clear_errors() -> None:
    x, y, _, _ = _ridge_data()
    lam = torch.ones(5, dtype=F64)
    w = ridge_weights(lam, x, y)
    call = r"fi\.hypergradient"
    with pytest.raises(TypeError, match=call + ".*scalar tensor.*shape \\(5,\\)"):
        fi.hypergradient(lambda w, *a: w, stationarity, w, lam, x, y)
    with pytest.raises(ValueError, match=call + ".*optimality_fn.*shape"):
        fi.hypergradient(_val_loss, lambda w, *a: w[:3], w, lam, x, y)
    with pytest.raises(TypeError, match=call + ".*argument 1.*torch.Tensor"):
        fi.hypergradient(_val_loss, stationarity, w, 1.0, x, y)
    with pytest.raises(TypeError, match=call + ".*real floating"):
        fi.hypergradient(_val_loss, stationarity, w, lam.long(), x, y)
    with pytest.raises(TypeError, match=call + ".*solve must be a linear solver"):
        fi.hypergradient(_val_loss, stationarity, w, lam, x, y, solve="cg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=call + ".*NaN or Inf"):
        fi.hypergradient(lambda w, *a: (w.log() ** 2).sum(), stationarity, -w.abs(), lam, x, y)


def test_an_unconverged_adjoint_solve_warns_or_raises() -> None:
    x, y, _, _ = _ridge_data()
    lam = torch.full((5,), 1e-3, dtype=F64)
    w = ridge_weights(lam, x, y)
    with pytest.warns(fi.ConvergenceWarning, match="adjoint solve"):
        out = fi.hypergradient(_val_loss, stationarity, w, lam, x, y, solve=fi.CG(maxiter=1))
    assert not bool(out.adjoint.converged)
    with pytest.raises(fi.ConvergenceError, match="adjoint solve"):
        fi.hypergradient(
            _val_loss, stationarity, w, lam, x, y, solve=fi.CG(maxiter=1, on_failure="raise")
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fi.hypergradient(
            _val_loss, stationarity, w, lam, x, y, solve=fi.CG(maxiter=1, on_failure="ignore")
        )

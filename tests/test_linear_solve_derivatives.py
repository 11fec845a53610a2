"""Derivatives of ``fi.linear_solve`` against autograd through a dense float64 solve.

References use only classic autograd through ``torch.linalg.solve`` (``torch.autograd.grad``
and ``torch.autograd.functional`` with its default non-vectorized loops), never ``torch.func``:
FINDINGS records ``vmap(jacfwd(torch.linalg.solve))`` as silently wrong on torch 2.13, so a
reference built with transforms could agree with a wrong answer. ``gradcheck`` /
``gradgradcheck`` (finite differences) are the second, fully independent reference.

Iterative solvers run with ``rtol = 1e-12`` on systems of condition number <= ~30: each
derivative costs one or two solves, so derivatives agree to about 1e-10; the comparisons use
``rtol = 1e-8, atol = 1e-10``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import pytest
import torch
from problems import F64, contraction, nonsymmetric, rhs, spd
from torch.autograd.functional import hessian as ref_hessian
from torch.autograd.functional import jacobian as ref_jacobian

import funcimplicit as fi

func = torch.func
RTOL, ATOL = 1e-8, 1e-10


def close(actual: Any, expected: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@dataclasses.dataclass(frozen=True)
class Case:
    """A solver, the matrix family it is differentiated on, and the dense reference."""

    name: str
    solver: Any  # None: linear_solve's default
    family: str  # "nonsym" | "spd" | "contraction"

    @property
    def symmetric(self) -> bool:
        return self.family == "spd"

    def operator(self, a: torch.Tensor) -> torch.Tensor:
        # Symmetric solvers see sym(A), so perturbing one entry of A (gradcheck) keeps the
        # operator symmetric; the reference differentiates the same map.
        return (a + a.mT) / 2 if self.symmetric else a

    def matvec(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.operator(a) @ v

    def matrix(self, n: int, seed: int) -> torch.Tensor:
        if self.family == "spd":
            return spd(n, 10.0, seed)
        if self.family == "contraction":
            return contraction(n, 0.5, seed)
        return nonsymmetric(n, 10.0, seed)

    def solve(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(self.matvec, b, a, solve=self.solver)

    def reference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        m = self.operator(a)
        ridge = 0.0 if self.solver is None else self.solver.ridge
        eye = torch.eye(m.shape[-1], dtype=m.dtype)
        x: torch.Tensor
        if isinstance(self.solver, fi.NormalCG):
            x = torch.linalg.solve(m.mT @ m + ridge * eye, m.mT @ b)
        else:
            x = torch.linalg.solve(m + ridge * eye, b)
        return x


CASES = (
    Case("default", None, "nonsym"),
    Case("GMRES", fi.GMRES(rtol=1e-12), "nonsym"),
    Case("GMRES_restart3", fi.GMRES(rtol=1e-12, restart=3, maxiter=500), "nonsym"),
    Case("BiCGStab", fi.BiCGStab(rtol=1e-12, maxiter=500), "nonsym"),
    Case("NormalCG", fi.NormalCG(rtol=1e-12), "nonsym"),
    Case("LU", fi.LU(), "nonsym"),
    Case("CG", fi.CG(rtol=1e-12), "spd"),
    Case("Cholesky", fi.Cholesky(), "spd"),
    Case("Neumann", fi.Neumann(rtol=1e-12, maxiter=500), "contraction"),
    Case("GMRES_ridge", fi.GMRES(rtol=1e-12, ridge=0.3), "nonsym"),
    Case("CG_ridge", fi.CG(rtol=1e-12, ridge=0.3), "spd"),
    Case("NormalCG_ridge", fi.NormalCG(rtol=1e-12, ridge=0.3), "nonsym"),
)
CASE_IDS = [c.name for c in CASES]
# The classic-autograd APIs below share one code path across solvers; a representative subset
# keeps the suite fast.
CLASSIC = tuple(c for c in CASES if c.name in ("GMRES", "LU", "CG", "NormalCG"))
CLASSIC_IDS = [c.name for c in CLASSIC]
N = 4


def inputs(case: Case, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return case.matrix(n, seed), rhs(n, seed)


def weights(n: int = N) -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, n, dtype=F64)


def loss_of(
    solve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A scalar loss, nonlinear in ``x`` so that its Hessian in ``b`` is not zero either."""

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = solve(a, b)
        return (weights(x.shape[-1]) * x).sum() + 0.5 * (x * x).sum()

    return loss


def reference_grads(case: Case, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    return torch.autograd.grad(loss_of(case.reference)(a, b), (a, b))


# --------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_value(case: Case) -> None:
    a, b = inputs(case)
    close(case.solve(a, b), case.reference(a, b))


# --------------------------------------------------------------------------------------------
# Reverse mode


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_autograd_grad(case: Case) -> None:
    a, b = inputs(case)
    a.requires_grad_()
    b.requires_grad_()
    grads = torch.autograd.grad(loss_of(case.solve)(a, b), (a, b))
    close(grads, reference_grads(case, a, b))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward(case: Case) -> None:
    a, b = inputs(case)
    a.requires_grad_()
    b.requires_grad_()
    loss_of(case.solve)(a, b).backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None
    assert b.grad is not None
    close((a.grad, b.grad), reference_grads(case, a, b))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_func_grad(case: Case) -> None:
    a, b = inputs(case)
    grads = func.grad(loss_of(case.solve), argnums=(0, 1))(a, b)
    close(grads, reference_grads(case, a, b))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vjp(case: Case) -> None:
    a, b = inputs(case)
    cotangent = rhs(N, 99)
    x, pullback = func.vjp(case.solve, a, b)  # type: ignore[misc]
    close(x, case.reference(a, b))
    a_ref = a.clone().requires_grad_()
    b_ref = b.clone().requires_grad_()
    expected = torch.autograd.grad(case.reference(a_ref, b_ref), (a_ref, b_ref), cotangent)
    close(pullback(cotangent), expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jacrev(case: Case) -> None:
    a, b = inputs(case)
    jac = func.jacrev(case.solve, argnums=(0, 1))(a, b)
    close(jac, ref_jacobian(case.reference, (a, b)))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jacrev_jacrev(case: Case) -> None:
    """Reverse-over-reverse second derivatives of the scalar loss."""
    a, b = inputs(case)
    loss = loss_of(case.solve)
    hess = func.jacrev(func.jacrev(loss, argnums=(0, 1)), argnums=(0, 1))(a, b)
    close(hess, ref_hessian(loss_of(case.reference), (a, b)))  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------
# Forward mode


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jvp(case: Case) -> None:
    a, b = inputs(case)
    ta, tb = case.matrix(N, 5), rhs(N, 5)
    x, tangent = func.jvp(case.solve, (a, b), (ta, tb))  # type: ignore[misc]
    close(x, case.reference(a, b))
    jac_a, jac_b = ref_jacobian(case.reference, (a, b))  # type: ignore[no-untyped-call]
    expected = torch.einsum("ijk,jk->i", jac_a, ta) + jac_b @ tb
    close(tangent, expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jacfwd(case: Case) -> None:
    a, b = inputs(case)
    jac = func.jacfwd(case.solve, argnums=(0, 1))(a, b)
    close(jac, ref_jacobian(case.reference, (a, b)))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hessian(case: Case) -> None:
    """``torch.func.hessian`` is forward-over-reverse (jacfwd of jacrev)."""
    a, b = inputs(case)
    hess = func.hessian(loss_of(case.solve), argnums=(0, 1))(a, b)
    close(hess, ref_hessian(loss_of(case.reference), (a, b)))  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------
# vmap of derivatives


def batch(case: Case, size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [inputs(case, seed=s) for s in range(size)]
    return torch.stack([p[0] for p in pairs]), torch.stack(
        [p[1] * (s + 1) for s, p in enumerate(pairs)]
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vmap_grad(case: Case) -> None:
    a, b = batch(case)
    grads = func.vmap(func.grad(loss_of(case.solve), argnums=(0, 1)))(a, b)
    for i in range(a.shape[0]):
        expected = reference_grads(case, a[i], b[i])
        close((grads[0][i], grads[1][i]), expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vmap_jacrev(case: Case) -> None:
    a, b = batch(case)
    jac = func.vmap(func.jacrev(case.solve, argnums=(0, 1)))(a, b)
    for i in range(a.shape[0]):
        expected = ref_jacobian(case.reference, (a[i], b[i]))  # type: ignore[no-untyped-call]
        close((jac[0][i], jac[1][i]), expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_grad_of_vmap(case: Case) -> None:
    a, b = batch(case)

    def total(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return func.vmap(loss_of(case.solve))(a, b).sum()

    grads = func.grad(total, argnums=(0, 1))(a, b)
    for i in range(a.shape[0]):
        close((grads[0][i], grads[1][i]), reference_grads(case, a[i], b[i]))


# --------------------------------------------------------------------------------------------
# Finite differences


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck(case: Case) -> None:
    a, b = inputs(case, n=3)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(case.solve, (a, b))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradgradcheck(case: Case) -> None:
    a, b = inputs(case, n=3)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradgradcheck(case.solve, (a, b))


@pytest.mark.parametrize("case", CLASSIC, ids=CLASSIC_IDS)
def test_gradcheck_forward_ad(case: Case) -> None:
    """Classic forward mode (``torch.autograd.forward_ad``), as gradcheck drives it."""
    a, b = inputs(case, n=3)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(
        case.solve,
        (a, b),
        check_forward_ad=True,
        check_backward_ad=False,
        check_undefined_grad=False,
        check_batched_grad=False,
    )


@pytest.mark.parametrize("case", CLASSIC, ids=CLASSIC_IDS)
def test_gradgradcheck_forward_over_reverse(case: Case) -> None:
    """Classic forward mode over the backward pass (``check_fwd_over_rev``)."""
    a, b = inputs(case, n=3)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradgradcheck(
        case.solve,
        (a, b),
        check_fwd_over_rev=True,
        check_rev_over_rev=False,
        check_undefined_grad=False,
    )


@pytest.mark.parametrize("case", CLASSIC, ids=CLASSIC_IDS)
def test_vectorized_autograd_functional(case: Case) -> None:
    """``torch.autograd.functional`` with ``vectorize=True`` (classic batched gradients,
    ``autograd.grad(..., is_grads_batched=True)``, as gradcheck's ``check_batched_grad``)."""
    a, b = inputs(case)
    jac = torch.autograd.functional.jacobian(case.solve, (a, b), vectorize=True)  # type: ignore[no-untyped-call]
    close(jac, ref_jacobian(case.reference, (a, b)))  # type: ignore[no-untyped-call]
    hess = torch.autograd.functional.hessian(loss_of(case.solve), (a, b), vectorize=True)  # type: ignore[no-untyped-call]
    close(hess, ref_hessian(loss_of(case.reference), (a, b)))  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------
# 0-d problems: the gradient is not silently zero


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_dimensional(case: Case) -> None:
    """``x = b / a`` for 0-d ``a`` and ``b``: ``dx/da = -b / a^2``, ``dx/db = 1 / a``."""
    a = torch.tensor(0.6, dtype=F64, requires_grad=True)  # SPD, and 1 - a is a contraction
    b = torch.tensor(1.5, dtype=F64, requires_grad=True)
    x = fi.linear_solve(lambda v, s: s * v, b, a, solve=case.solver)
    ridge = 0.0 if case.solver is None else case.solver.ridge
    if isinstance(case.solver, fi.NormalCG):  # x = a b / (a^2 + ridge)
        a_ref = a.detach().requires_grad_()
        b_ref = b.detach().requires_grad_()
        expected = torch.autograd.grad(a_ref * b_ref / (a_ref**2 + ridge), (a_ref, b_ref))
    else:
        expected = (-b.detach() / (a.detach() + ridge) ** 2, 1 / (a.detach() + ridge))
    assert x.shape == ()
    close(torch.autograd.grad(x, (a, b)), expected)
    assert float(expected[0]) != 0.0


# --------------------------------------------------------------------------------------------
# Pytrees and argument handling


class Sentinel:
    """A non-tensor argument leaf that must reach matvec as the very same object."""


def test_pytree_rhs_and_dict_args() -> None:
    """``b`` a dict of a vector and a 0-d leaf; args a dict mixing tensors and non-tensors."""
    sentinel = Sentinel()
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    coupling = nonsymmetric(4, 10.0, 3)
    shift = torch.rand(4, dtype=F64, generator=gen) + 0.5
    bu = torch.randn(3, dtype=F64, generator=gen)
    bw = torch.randn((), dtype=F64, generator=gen)
    seen: list[Any] = []

    def matvec(v: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        seen.append((params["tag"], params["obj"], params["scale"], params["nested"][1]))
        flat = torch.cat([v["u"], v["w"].reshape(1)])
        out = params["scale"] * (params["A"] @ flat) + params["nested"][0] * flat
        return {"u": out[:3], "w": out[3]}

    def solve(a: torch.Tensor, s: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> Any:
        params = {"A": a, "scale": 2.0, "tag": "coupled", "obj": sentinel, "nested": (s, 7)}
        x = fi.linear_solve(matvec, {"u": u, "w": w}, params, solve=fi.GMRES(rtol=1e-12))
        return torch.cat([x["u"], x["w"].reshape(1)])

    def reference(a: torch.Tensor, s: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> Any:
        return torch.linalg.solve(2.0 * a + torch.diag(s), torch.cat([u, w.reshape(1)]))

    args = (coupling, shift, bu, bw)
    close(solve(*args), reference(*args))
    assert all(item == ("coupled", sentinel, 2.0, 7) for item in seen)
    assert all(item[1] is sentinel for item in seen)
    close(func.jacrev(solve, argnums=(0, 1, 2, 3))(*args), ref_jacobian(reference, args))  # type: ignore[no-untyped-call]
    tangents = tuple(torch.ones_like(t) for t in args)
    _, jvp_out = func.jvp(solve, args, tangents)  # type: ignore[misc]
    expected = sum(
        torch.tensordot(j, t, dims=t.dim())
        for j, t in zip(ref_jacobian(reference, args), tangents, strict=True)  # type: ignore[no-untyped-call]
    )
    close(jvp_out, expected)

    leaves = [t.clone().requires_grad_() for t in args]
    solve(*leaves).square().sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in args]
    reference(*ref_leaves).square().sum().backward()
    close([t.grad for t in leaves], [t.grad for t in ref_leaves])


@pytest.mark.parametrize("solver", [fi.GMRES(rtol=1e-12), fi.LU()], ids=["GMRES", "LU"])
def test_data_argument_gets_no_gradient(solver: Any) -> None:
    a = nonsymmetric(N, 10.0, 0).requires_grad_()
    data = torch.rand(N, dtype=F64) + 0.5  # requires_grad False: data, not a parameter
    b = rhs(N, 0)

    def matvec(v: torch.Tensor, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return a @ v + d * v

    x = fi.linear_solve(matvec, b, a, data, solve=solver)
    x.square().sum().backward()  # type: ignore[no-untyped-call]
    assert data.grad is None
    assert b.grad is None
    a_ref = a.detach().requires_grad_()
    torch.linalg.solve(a_ref + torch.diag(data), b).square().sum().backward()
    close(a.grad, a_ref.grad)

    # torch.func.grad in the matrix only: the data tensor is an ordinary constant.
    def loss(a: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(matvec, b, a, data, solve=solver).square().sum()

    close(func.grad(loss)(a.detach()), a_ref.grad)


@pytest.mark.parametrize("case", [CASES[1], CASES[5]], ids=["GMRES", "LU"])
def test_same_tensor_as_rhs_and_argument(case: Case) -> None:
    """``x = (A0 + diag(c))^{-1} c``: the same tensor ``c`` is ``b`` and an argument."""
    a0 = nonsymmetric(N, 10.0, 1)
    c = (
        torch.rand(
            N,
            dtype=F64,
            generator=torch.Generator(device=torch.get_default_device()).manual_seed(1),
        )
        + 0.5
    )

    def matvec(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a0 @ v + c * v

    def solve(c: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(matvec, c, c, solve=case.solver)

    def reference(c: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = torch.linalg.solve(a0 + torch.diag(c), c)
        return x

    close(solve(c), reference(c))
    expected = ref_jacobian(reference, c)  # type: ignore[no-untyped-call]
    close(func.jacrev(solve)(c), expected)
    close(func.jacfwd(solve)(c), expected)
    leaf = c.clone().requires_grad_()
    assert torch.autograd.gradcheck(solve, (leaf,))
    assert torch.autograd.gradgradcheck(solve, (leaf,))

    # The same tensor twice in args.
    def solve_twice(c: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(lambda v, p, q: a0 @ v + p * q * v, c, c, c, solve=case.solver)

    def reference_twice(c: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = torch.linalg.solve(a0 + torch.diag(c * c), c)
        return x

    close(func.jacrev(solve_twice)(c), ref_jacobian(reference_twice, c))  # type: ignore[no-untyped-call]
    close(func.jacfwd(solve_twice)(c), ref_jacobian(reference_twice, c))  # type: ignore[no-untyped-call]


def test_init_is_not_differentiated() -> None:
    a, b = nonsymmetric(N, 10.0, 0), rhs(N, 0)
    init = torch.linalg.solve(a, b).requires_grad_()  # a warm start at the solution itself
    b = b.clone().requires_grad_()
    x = fi.linear_solve(lambda v, m: m @ v, b, a, solve=fi.GMRES(rtol=1e-12), init=init)
    x.sum().backward()
    assert init.grad is None
    close(b.grad, torch.linalg.solve(a.mT, torch.ones(N, dtype=F64)))


# --------------------------------------------------------------------------------------------
# NormalCG on a non-square (overdetermined) least-squares problem


def test_normal_cg_least_squares() -> None:
    m, n = 7, 4
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(0)
    a = torch.randn(m, n, dtype=F64, generator=gen)
    b = torch.randn(m, dtype=F64, generator=gen)
    solver = fi.NormalCG(rtol=1e-12)

    def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fi.linear_solve(
            lambda v, mat: mat @ v, b, a, solve=solver, init=torch.zeros(n, dtype=F64)
        )

    def closed_form(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # x = (A^T A)^{-1} A^T b, differentiated by autograd through the normal equations.
        x: torch.Tensor = torch.linalg.solve(a.mT @ a, a.mT @ b)
        return x

    x = solve(a, b)
    assert x.shape == (n,)
    close(x, torch.linalg.lstsq(a, b[:, None]).solution[:, 0])
    close(func.jacrev(solve, argnums=(0, 1))(a, b), ref_jacobian(closed_form, (a, b)))  # type: ignore[no-untyped-call]
    close(func.jacfwd(solve, argnums=(0, 1))(a, b), ref_jacobian(closed_form, (a, b)))  # type: ignore[no-untyped-call]
    leaves = (a.clone().requires_grad_(), b.clone().requires_grad_())
    assert torch.autograd.gradcheck(solve, leaves)
    assert torch.autograd.gradgradcheck(solve, leaves)


# --------------------------------------------------------------------------------------------
# A backward solve that fails is reported, never a silent wrong gradient


def backward_failure_setup(
    on_failure: Literal["warn", "raise", "ignore"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward solve starts at the solution (0 iterations, converged); the transposed
    solve of the backward pass starts from zero and gets a single iteration."""
    a, b = nonsymmetric(6, 100.0, 0), rhs(6, 0)
    init = torch.linalg.solve(a, b)
    a.requires_grad_()
    solver = fi.GMRES(maxiter=1, on_failure=on_failure)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the forward solve itself converges
        x = fi.linear_solve(lambda v, m: m @ v, b, a, solve=solver, init=init)
    return x, a


def test_backward_failure_warns() -> None:
    x, _ = backward_failure_setup("warn")
    with pytest.warns(fi.ConvergenceWarning, match=r"(?s)linear_solve.*did not converge"):
        x.sum().backward()  # type: ignore[no-untyped-call]


def test_backward_failure_raises() -> None:
    x, _ = backward_failure_setup("raise")
    with pytest.raises(fi.ConvergenceError, match="did not converge"):
        x.sum().backward()  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------
# Forward-over-forward: a known upstream defect (FINDINGS, pytorch issue 197867)


@pytest.mark.parametrize("nesting", ["jacfwd(jacfwd)", "jvp(jvp)"])
def test_forward_over_forward_is_never_silently_wrong(nesting: str) -> None:
    """Through an autograd.Function, forward-over-forward second derivatives are wrong on
    torch 2.13. The library may refuse them (naming the exact alternatives) or, on a torch that
    fixed the bug, compute them; it must never return wrong numbers."""
    case = CASES[5]  # LU: exact, so any discrepancy is the transform's
    a, b = inputs(case)
    loss = loss_of(case.solve)
    expected = ref_hessian(loss_of(case.reference), (a, b))  # type: ignore[no-untyped-call]
    ta = case.matrix(N, 7)

    def directional(a: torch.Tensor) -> torch.Tensor:  # d^2 loss along (ta, ta)
        second: torch.Tensor = func.jvp(
            lambda m: func.jvp(lambda k: loss(k, b), (m,), (ta,))[1], (a,), (ta,)
        )[1]
        return second

    refusal = None
    try:
        if nesting == "jacfwd(jacfwd)":
            got: Any = func.jacfwd(func.jacfwd(loss, argnums=(0, 1)), argnums=(0, 1))(a, b)
        else:
            got = directional(a)
    except NotImplementedError as error:
        refusal = str(error)
    if refusal is not None:
        assert "hessian" in refusal
        assert "jacrev" in refusal
        return
    if nesting == "jacfwd(jacfwd)":
        close(got, expected)
    else:
        close(got, torch.einsum("ij,ijkl,kl->", ta, expected[0][0], ta))


def test_solution_matches_solver_run() -> None:
    """``linear_solve``'s forward value is the solver's own solution."""
    a, b = nonsymmetric(N, 10.0, 2), rhs(N, 2)
    solver = fi.BiCGStab()
    x = fi.linear_solve(lambda v, m: m @ v, b, a, solve=solver)
    torch.testing.assert_close(x, solver.run(lambda v: a @ v, b).solution, rtol=0, atol=0)
    assert math.isfinite(float(x.sum()))
